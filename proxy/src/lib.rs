//! tenantgate's hot path: a Pingora `ProxyHttp` service that enforces tenancy in
//! front of any HTTP upstream. Stages, in order: route → scrub → authenticate →
//! tenant → authorize → rate limit → inject → meter.
#![forbid(unsafe_code)]

pub mod control;
pub mod credential;
pub mod headers;
pub mod jwt;
pub mod limiter;
pub mod meter;
pub mod metrics;
pub mod ratelimit;
pub mod reject;
pub mod route;
pub mod server;
pub mod service;
pub mod small;
