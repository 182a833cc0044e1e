//! Shared pieces of tenantgate: the domain model, the config model, secrets and
//! signing keys, and the control-plane store (SQLite or PostgreSQL).
#![forbid(unsafe_code)]

pub mod assertion;
pub mod config;
pub mod domain;
pub mod issuers;
pub mod jwt;
pub mod pem;
pub mod scaling;
pub mod sealing;
pub mod secrets;
pub mod store;
pub mod testing;
pub mod time;
pub mod usage;

pub use config::Settings;
pub use store::{Change, ChangeKind, Store, StoreError};
