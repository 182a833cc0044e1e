//! The config file's format: what `tenantgate.toml` may contain, with every
//! default. It is only read here; the rest of the program uses the validated
//! [`Settings`](super::Settings) built from it.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub upstream_demo: UpstreamDemoConfig,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub ratelimit: RateLimitConfig,
    pub metering: MeteringConfig,
    pub jwt: JwtConfig,
    pub assertion: AssertionConfig,
    pub routes: Vec<RouteConfig>,
    /// `[[upstream_pools]]`: named upstreams a silo tenant's `upstream_pool` picks.
    pub upstream_pools: Vec<UpstreamPoolConfig>,
    /// `[[autoscale]]`: a scaling policy per route.
    pub autoscale: Vec<AutoscaleConfig>,
    /// `[scaling]`: how often (and over which signals) the policies are evaluated.
    pub scaling: ScalingConfig,
    pub security: SecurityConfig,
    pub log: LogConfig,
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `/health` and `/metrics` of the proxy.
    pub admin_listen: SocketAddr,
    /// Pingora worker threads.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub grace_period_seconds: u64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_read_timeout_ms: u64,
    /// Safety-net TTL of cached tenants, keys, policies and limits.
    pub cache_ttl_seconds: u64,
    /// How long an unknown API key prefix is remembered as unknown.
    pub negative_cache_ttl_ms: u64,
    /// While the store is unreachable, cached entries keep serving up to this age;
    /// past it a lookup must reach the store or the request fails closed (503).
    pub max_staleness_seconds: u64,
    /// How often a standalone proxy polls the store's change feed.
    pub change_poll_interval_ms: u64,
    /// Per-tenant metric labels are kept for the busiest K tenants; the rest are `other`.
    pub metrics_top_tenants: usize,
    /// Largest accepted bearer token, bytes.
    pub max_token_bytes: usize,
    /// Peers (CIDRs) whose forwarding headers are believed: for them the proxy
    /// appends to `x-forwarded-for`; everyone else's are replaced.
    pub trusted_proxies: Vec<String>,
    /// A request's header section must be complete this long after its first byte.
    pub header_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long without a request.
    pub keepalive_timeout_seconds: u64,
    /// Client connections beyond this are closed at accept; default (0): derived
    /// from the open-file limit.
    pub max_connections: usize,
    /// How floods of refused requests are shed (`[proxy.fairness]`).
    pub fairness: FairnessConfig,
    /// `[proxy.tls]`: a TLS listener beside the plaintext one.
    pub tls: Option<TlsConfig>,
}

/// `[proxy.fairness]`: a client that keeps being refused is slowed down so a
/// flood of refusals cannot take the proxy's capacity from other tenants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessConfig {
    pub enabled: bool,
    /// Consecutive refusals on one connection answered at full speed.
    pub grace_refusals: u32,
    /// Longest a refused connection waits before its next request is read
    /// (a 429's wait is also bounded by its `Retry-After`).
    pub max_delay_ms: u64,
    /// A connection is closed after this many consecutive refusals (0: never).
    pub close_after_refusals: u32,
    /// Connections being slowed at once; beyond this a refused connection is
    /// closed instead (0: a quarter of `proxy.max_connections`, at most 10000).
    pub max_held_connections: usize,
    /// Refusals per second per client address answered at full speed; beyond
    /// it, refusals to that address are delayed too (floods that open a new
    /// connection per request). 0 (default): off — turn it on where client
    /// addresses are meaningful (not behind one NAT or a load tester's loopback).
    pub ip_refusals_per_second: u32,
}

impl Default for FairnessConfig {
    fn default() -> Self {
        FairnessConfig {
            enabled: true,
            grace_refusals: 10,
            max_delay_ms: 1_000,
            close_after_refusals: 1_000,
            max_held_connections: 0,
            ip_refusals_per_second: 0,
        }
    }
}

/// `[proxy.tls]`: the TLS (HTTP/1.1 and HTTP/2 by ALPN) listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// Certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CAs of client certificates (PEM): when set, clients are asked for one.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    pub sni: Vec<SniConfig>,
}

/// `[[proxy.tls.sni]]`: a certificate for some server names (`*.example.com`
/// matches one label).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniConfig {
    pub server_names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            grace_period_seconds: 5,
            upstream_connect_timeout_ms: 2_000,
            upstream_read_timeout_ms: 30_000,
            cache_ttl_seconds: 60,
            negative_cache_ttl_ms: 2_000,
            max_staleness_seconds: 600,
            change_poll_interval_ms: 200,
            metrics_top_tenants: 20,
            max_token_bytes: 8_192,
            trusted_proxies: Vec::new(),
            header_timeout_ms: 10_000,
            keepalive_timeout_seconds: 60,
            max_connections: 0,
            fairness: FairnessConfig::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Platform admin bearer token; `TENANTGATE_ADMIN_TOKEN` overrides it.
    pub bootstrap_token: Option<String>,
    /// Secret the signing keys are sealed with; default: a key file in `store.data_dir`.
    pub secret_key: Option<String>,
    /// Lifetime of login tokens.
    pub token_ttl_seconds: u64,
    /// `iss` of login tokens.
    pub issuer: String,
    /// Peers (CIDRs) whose `x-forwarded-for` names the client for login throttling.
    pub trusted_proxies: Vec<String>,
    /// The proxy admin listener `POST /v1/explain` asks (`http://host:port`);
    /// default: `proxy.admin_listen` of the same file.
    pub explain_proxy_url: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            bootstrap_token: None,
            secret_key: None,
            token_ttl_seconds: 3_600,
            issuer: "tenantgate".into(),
            trusted_proxies: Vec::new(),
            explain_proxy_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDemoConfig {
    pub listen: SocketAddr,
    /// Where the demo keeps its rows; default: the control-plane store.
    pub store_url: Option<String>,
    /// Answer 401 `invalid_assertion` unless `x-tenant-assertion` verifies.
    pub require_assertion: bool,
    /// The JWKS the assertions are checked against; default: the proxy's
    /// `http://<proxy.admin_listen>/.well-known/jwks.json`.
    pub assertion_jwks_url: Option<String>,
}

impl Default for UpstreamDemoConfig {
    fn default() -> Self {
        UpstreamDemoConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            store_url: None,
            require_assertion: false,
            assertion_jwks_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    /// Pool size; unset: 4 on SQLite, 10 on PostgreSQL.
    pub max_connections: Option<u32>,
    /// Local state: SQLite files, the sealed-key secret, the metering spool.
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/tenantgate.db".into(),
            max_connections: None,
            data_dir: PathBuf::from("data"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Option<String>,
    /// Budget of one rate-limit call; past it the call counts as failed (circuit breaker).
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Prefix of every key tenantgate writes.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            timeout_ms: 10,
            connect_timeout_ms: 250,
            key_prefix: "tenantgate:rl".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    pub fail_mode: FailMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    pub flush_interval_ms: u64,
    /// Identifies this process's flushes; default: random per start.
    pub node_id: Option<String>,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            flush_interval_ms: 1_000,
            node_id: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew allowed on `exp`/`nbf` (at most 60).
    pub leeway_seconds: u64,
    /// Accept plain `http://` JWKS URLs: for bound issuers at all, for
    /// `[[jwt.issuers]]` beyond loopback hosts.
    pub allow_insecure_jwks: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuers: Vec::new(),
            leeway_seconds: 30,
            allow_insecure_jwks: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Minimum seconds between two JWKS fetches for an unknown `kid`.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// Regular JWKS refresh.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Tokens whose `exp` lies further than this from now (or from `iat`) are refused.
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_tenant_claim() -> String {
    "tenant_id".into()
}
fn default_role_claim() -> String {
    "role".into()
}
fn default_jwks_min_refetch() -> u64 {
    10
}
fn default_jwks_refresh() -> u64 {
    300
}

/// One upstream address or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Upstreams {
    One(String),
    Many(Vec<String>),
}

impl Upstreams {
    pub fn addrs(&self) -> Vec<String> {
        match self {
            Upstreams::One(a) => vec![a.clone()],
            Upstreams::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub upstream: Upstreams,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub public: bool,
    /// `aud` of this route's assertions; default: the prefix.
    #[serde(default)]
    pub audience: Option<String>,
    /// Overrides `[assertion] bind_request` for this route.
    #[serde(default)]
    pub bind_request: Option<bool>,
    /// `false`: no assertion on this route (an upstream that does not want it).
    #[serde(default = "yes")]
    pub assertion: bool,
    /// CAs (PEM) an `https://` upstream's certificate is verified against;
    /// default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The route's name in scaling signals, `[[autoscale]] route` and metrics;
    /// default: the prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// Silo tenants of this route: tenant id → its own upstream (host:port or a
    /// list, like `upstream`). Wins over the tenant's `upstream_pool`.
    #[serde(default)]
    pub tenant_upstreams: std::collections::BTreeMap<String, Upstreams>,
}

/// `[[upstream_pools]]`: an upstream tenants are moved to with
/// `PATCH /v1/tenants/{id} {"upstream_pool": "<name>"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPoolConfig {
    pub name: String,
    pub upstream: Upstreams,
    /// CAs (PEM) of an `https://` pool's certificates; default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[[autoscale]]`: how many replicas a route's upstream should run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// A `[[routes]]` entry's `name` (default: its prefix).
    pub route: String,
    /// Requests per second one replica is meant to serve.
    pub target_rps_per_replica: f64,
    #[serde(default = "one")]
    pub min: u32,
    #[serde(default = "ten")]
    pub max: u32,
    /// Least time between two changes.
    #[serde(default = "sixty")]
    pub cooldown_seconds: u64,
    /// A scale-down goes only as low as the highest recommendation of this window.
    #[serde(default = "three_hundred")]
    pub scale_down_stabilisation_seconds: u64,
}

fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}
fn sixty() -> u64 {
    60
}
fn three_hundred() -> u64 {
    300
}

/// `[scaling]`: the evaluation loop of the `[[autoscale]]` policies (admin API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingConfig {
    /// How often the policies are evaluated (by one admin process of the fleet).
    pub evaluate_interval_ms: u64,
    /// A proxy's signals older than this are left out of the sum (a proxy that stopped).
    pub signal_max_age_ms: u64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            evaluate_interval_ms: 5_000,
            signal_max_age_ms: 15_000,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[assertion]`: the signed tenant assertion sent upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    pub enabled: bool,
    /// `iss` of every assertion.
    pub issuer: String,
    /// `ES256` or `EdDSA`: the algorithm of keys this fleet creates.
    pub algorithm: String,
    /// One assertion per request (with `request_id`, `htm`, `htu`) instead of one
    /// per (principal, audience) reused while it has more than 30 s to live.
    pub bind_request: bool,
    /// A new key is in the JWKS at least this long before it signs anything.
    pub publish_ahead_seconds: u64,
    /// A key older than this is replaced by a new one (published ahead).
    pub rotate_after_seconds: u64,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            enabled: true,
            issuer: "tenantgate".into(),
            algorithm: "ES256".into(),
            bind_request: false,
            publish_ahead_seconds: 60,
            rotate_after_seconds: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// When set, API key digests are HMAC-SHA-256 keyed by this pepper.
    /// Every admin and proxy process must share it.
    pub api_key_pepper: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `tenantgate_proxy=debug,info`.
    pub level: String,
    /// `auto` (text on a terminal, JSON otherwise), `json` or `text`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "auto".into(),
        }
    }
}

/// `[retention]`: how long each append-only table keeps its rows. Values may be
/// fractional (tests use seconds' worth of days).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Minute usage rows older than this are deleted once rolled up.
    pub usage_minute_days: f64,
    /// Hour usage rows older than this are deleted once rolled up; day rows stay.
    pub usage_hour_days: f64,
    /// Idempotency records of applied metering flushes.
    pub flush_records_hours: f64,
    /// The change feed; a proxy further behind reloads everything.
    pub changes_hours: f64,
    pub audit_days: f64,
    /// Scaling events (`GET /v1/scaling/events`).
    pub scaling_events_days: f64,
    /// How often the elected process runs a rollup and retention pass.
    pub run_interval_seconds: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            usage_minute_days: 7.0,
            usage_hour_days: 400.0,
            flush_records_hours: 24.0,
            changes_hours: 24.0,
            audit_days: 400.0,
            scaling_events_days: 400.0,
            run_interval_seconds: 60.0,
        }
    }
}
