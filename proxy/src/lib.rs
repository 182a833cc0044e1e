//! tenantgate's hot path: a Pingora `ProxyHttp` service that enforces tenancy in
//! front of any HTTP upstream. Stages, in order: route → scrub → authenticate →
//! tenant → authorize → rate limit → inject → meter.
//!
//! Layers, each using only the ones above it: `small`, `cache` (generic) and
//! `metrics`; `reject`, `headers` and `forwarded`; `auth` (credentials → principal); `control`
//! (tenant views, the change follower); `limiter`, `meter`, `route`; `service`
//! (the stages); `server` (assembly).
#![forbid(unsafe_code)]

pub mod admit;
pub mod assertion;
pub mod auth;
pub mod cache;
pub mod control;
pub mod explain;
pub mod fairness;
pub mod forwarded;
pub mod headers;
pub mod limiter;
pub mod listener;
pub mod meter;
pub mod metrics;
pub mod reject;
pub mod route;
pub mod server;
pub mod service;
pub mod signals;
pub mod small;
pub mod tls;
