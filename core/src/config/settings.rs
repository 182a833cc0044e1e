//! The validated settings every part of tenantgate runs on: durations as
//! `Duration`s, choices as enums, defaults resolved. Built once from the file
//! format ([`Config`]); a value that does not make sense is refused here with the
//! key that holds it.

use super::file::{self, Config, FailMode, IssuerConfig, RateLimitBackend, RouteConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Asymmetric algorithms an issuer may allow; HMAC and `none` are never accepted.
pub const ALLOWED_JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A refused value: the dotted key and what is wrong with it.
pub(super) type Invalid = (String, String);

fn invalid<T>(key: &str, message: &str) -> Result<T, Invalid> {
    Err((key.to_owned(), message.to_owned()))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub demo: DemoSettings,
    pub store: StoreSettings,
    pub ratelimit: RateLimitSettings,
    pub metering: MeteringSettings,
    pub jwt: JwtSettings,
    pub assertion: AssertionSettings,
    /// The configured routes (`up` adds a default one when there are none).
    pub routes: Vec<RouteSettings>,
    /// `[[upstream_pools]]`, by name.
    pub upstream_pools: Vec<UpstreamPoolSettings>,
    /// `[[autoscale]]`: one policy per route (named by the route's name).
    pub autoscale: Vec<AutoscaleSettings>,
    pub scaling: ScalingSettings,
    pub security: SecuritySettings,
    pub log: LogSettings,
    pub retention: RetentionSettings,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    /// `/health` and `/metrics` of the proxy.
    pub admin_listen: SocketAddr,
    /// Pingora worker threads.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub grace_period: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    /// Cached tenants, keys, policies and limits are refreshed after this.
    pub cache_ttl: Duration,
    /// How long an unknown API key prefix or tenant is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// While the store is unreachable, cached entries keep serving up to this age.
    pub max_staleness: Duration,
    /// How often the store's change feed is read.
    pub change_poll_interval: Duration,
    /// Per-tenant metric labels for the busiest K tenants; the rest are `other`.
    pub metrics_top_tenants: usize,
    /// Largest accepted bearer token, bytes.
    pub max_token_bytes: usize,
    /// Peers whose forwarding headers are believed (a bare address is a /32 or /128).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Total deadline for a request's header section, from its first byte.
    pub header_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub keepalive_timeout: Duration,
    /// `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    pub fairness: FairnessSettings,
    /// `[proxy.tls]`: the TLS listener, when configured.
    pub tls: Option<TlsSettings>,
}

/// `[proxy.fairness]`, validated (see the file format for each knob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairnessSettings {
    pub enabled: bool,
    pub grace_refusals: u32,
    pub max_delay: Duration,
    /// 0: never.
    pub close_after_refusals: u32,
    /// `None`: a quarter of the connection limit.
    pub max_held_connections: Option<usize>,
    /// 0: off.
    pub ip_refusals_per_second: u32,
}

/// `[proxy.tls]`, checked: every file named was readable and held what it
/// should when the settings were built (they are read again on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub sni: Vec<SniSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniSettings {
    /// Lower-case; `*.example.com` matches exactly one label before `example.com`.
    pub server_names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Platform admin bearer token (`TENANTGATE_ADMIN_TOKEN` overrides it).
    pub bootstrap_token: Option<String>,
    /// Secret the signing keys are sealed with; default: a key file in the data dir.
    pub secret_key: Option<String>,
    /// Lifetime of login tokens.
    pub token_ttl: Duration,
    /// `iss` of login tokens.
    pub issuer: String,
    /// Peers whose `x-forwarded-for` names the client (login throttling).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `admin.explain_proxy_url`: the proxy admin listener explain asks (`None`:
    /// `proxy.admin_listen`).
    pub explain_proxy_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub listen: SocketAddr,
    /// Where the demo keeps its rows: its own URL, or the control-plane store's.
    pub store_url: String,
    pub require_assertion: bool,
    /// Where the demo reads the assertion keys (resolved: the proxy's JWKS by default).
    pub assertion_jwks_url: String,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: String,
    pub backend: StoreBackend,
    /// Pool size (default: 4 on SQLite, 10 on PostgreSQL).
    pub max_connections: u32,
    /// Local state: SQLite files, the sealed-key secret, the metering spool.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub backend: LimiterBackend,
    /// What happens when Redis is unreachable.
    pub fail_mode: FailMode,
}

#[derive(Debug, Clone)]
pub enum LimiterBackend {
    Local,
    Redis(RedisSettings),
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Budget of one rate-limit call; past it the call counts as failed.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Prefix of every key tenantgate writes.
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct MeteringSettings {
    pub flush_interval: Duration,
    /// Identifies this process's flushes; `None`: random per start.
    pub node_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuers: Vec<IssuerSettings>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// Plain `http://` JWKS URLs are accepted (beyond loopback hosts).
    pub allow_insecure_jwks: bool,
}

#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Names from [`ALLOWED_JWT_ALGORITHMS`].
    pub algorithms: Vec<String>,
    pub keys: IssuerKeys,
    pub tenant_claim: String,
    pub role_claim: String,
    /// Minimum time between two JWKS fetches for an unknown `kid`.
    pub jwks_min_refetch: Duration,
    /// Regular JWKS refresh.
    pub jwks_refresh: Duration,
    /// Tokens whose `exp` lies further than this from now (or from `iat`) are refused.
    pub max_lifetime: Option<Duration>,
}

/// Where an issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKeys {
    JwksUrl(String),
    PublicKeyFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSettings {
    pub prefix: String,
    /// The route's name in scaling signals and `[[autoscale]]` (default: the prefix).
    pub name: String,
    /// Silo tenants: tenant id → its own upstream (wins over its pool).
    pub tenant_upstreams: std::collections::BTreeMap<String, UpstreamSettings>,
    /// `host:port`, one or more (round-robin).
    pub upstreams: Vec<String>,
    /// The RBAC resource; `None`: the first path segment after the prefix.
    pub resource: Option<String>,
    /// Skips authentication (headers are still scrubbed).
    pub public: bool,
    /// `aud` of this route's assertions (default: the prefix).
    pub audience: String,
    /// Per-request assertions on this route (default: `[assertion] bind_request`).
    pub bind_request: Option<bool>,
    /// Whether this route's requests carry the assertion (when `[assertion]` is on).
    pub assertion: bool,
    /// `https://` upstreams: TLS with SNI = the host, verified against `ca_file`
    /// or the system roots.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
}

/// One upstream cluster: `host:port` addresses (round-robin), plain or TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamSettings {
    pub addrs: Vec<String>,
    /// `https://`: TLS with SNI = the host, verified against `ca_file` or the system roots.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
}

/// `[[upstream_pools]]`: a named upstream silo tenants are moved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPoolSettings {
    /// `[a-z0-9_-]{1,64}`, unique.
    pub name: String,
    pub upstream: UpstreamSettings,
}

/// `[[autoscale]]`, validated: the policy of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleSettings {
    /// The route's name.
    pub route: String,
    pub policy: crate::scaling::Policy,
}

/// `[scaling]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalingSettings {
    pub evaluate_interval: Duration,
    pub signal_max_age: Duration,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        ScalingSettings {
            evaluate_interval: Duration::from_secs(5),
            signal_max_age: Duration::from_secs(15),
        }
    }
}

/// `[assertion]`, validated.
#[derive(Debug, Clone)]
pub struct AssertionSettings {
    pub enabled: bool,
    pub issuer: String,
    pub algorithm: crate::assertion::AssertionAlg,
    pub bind_request: bool,
    pub publish_ahead: Duration,
    pub rotate_after: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// When set, API key digests are HMAC-SHA-256 keyed by this pepper.
    pub api_key_pepper: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `tenantgate_proxy=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text when stderr is a terminal, JSON otherwise.
    Auto,
    Json,
    Text,
}

impl Default for Settings {
    /// The built-in defaults (what an empty file gives).
    fn default() -> Self {
        match Settings::try_from(&Config::default()) {
            Ok(s) => s,
            Err((key, message)) => panic!("built-in default of {key} is invalid: {message}"),
        }
    }
}

/// The prefix (and name) of the route `up` adds when none is configured.
pub const DEMO_ROUTE: &str = "/api/v1/";

impl Settings {
    /// The upstream pool called `name`.
    pub fn upstream_pool(&self, name: &str) -> Option<&UpstreamPoolSettings> {
        self.upstream_pools.iter().find(|p| p.name == name)
    }

    pub fn api_key_pepper(&self) -> Option<&[u8]> {
        self.security.api_key_pepper.as_deref().map(str::as_bytes)
    }

    /// The routes the proxy serves in `up`: the configured ones, or `/api/v1/` →
    /// the demo upstream.
    pub fn routes_or_demo(&self) -> Vec<RouteSettings> {
        if self.routes.is_empty() {
            vec![RouteSettings {
                prefix: DEMO_ROUTE.into(),
                name: DEMO_ROUTE.into(),
                upstreams: vec![self.demo.listen.to_string()],
                audience: DEMO_ROUTE.into(),
                assertion: true,
                ..RouteSettings::default()
            }]
        } else {
            self.routes.clone()
        }
    }
}

impl TryFrom<&Config> for Settings {
    type Error = Invalid;

    fn try_from(c: &Config) -> Result<Self, Invalid> {
        let store = store(&c.store)?;
        let demo_store_url = match &c.upstream_demo.store_url {
            Some(u) if store_backend(u).is_none() => {
                return invalid(
                    "upstream_demo.store_url",
                    "must start with sqlite: or postgres://",
                )
            }
            Some(u) => u.clone(),
            None => store.url.clone(),
        };
        let routes = routes(&c.routes)?;
        let autoscale = autoscale(&c.autoscale, &routes)?;
        Ok(Settings {
            proxy: proxy(&c.proxy)?,
            admin: admin(&c.admin)?,
            demo: DemoSettings {
                listen: c.upstream_demo.listen,
                store_url: demo_store_url,
                require_assertion: c.upstream_demo.require_assertion,
                assertion_jwks_url: demo_jwks_url(c)?,
            },
            store,
            ratelimit: ratelimit(c)?,
            metering: metering(&c.metering)?,
            jwt: jwt(&c.jwt)?,
            assertion: assertion(&c.assertion)?,
            routes,
            upstream_pools: upstream_pools(&c.upstream_pools)?,
            autoscale,
            scaling: scaling(&c.scaling)?,
            security: SecuritySettings {
                api_key_pepper: c.security.api_key_pepper.clone(),
            },
            log: log(&c.log)?,
            retention: retention(&c.retention)?,
        })
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

fn proxy(p: &file::ProxyConfig) -> Result<ProxySettings, Invalid> {
    if !(1..=256).contains(&p.threads) {
        return invalid("proxy.threads", "must be between 1 and 256");
    }
    if p.grace_period_seconds > 3_600 {
        return invalid("proxy.grace_period_seconds", "must be at most 3600");
    }
    if p.upstream_connect_timeout_ms == 0 {
        return invalid("proxy.upstream_connect_timeout_ms", "must be positive");
    }
    if p.upstream_read_timeout_ms == 0 {
        return invalid("proxy.upstream_read_timeout_ms", "must be positive");
    }
    if p.change_poll_interval_ms == 0 || p.change_poll_interval_ms > 60_000 {
        return invalid(
            "proxy.change_poll_interval_ms",
            "must be between 1 and 60000",
        );
    }
    if p.max_staleness_seconds < p.cache_ttl_seconds {
        return invalid(
            "proxy.max_staleness_seconds",
            "must be at least proxy.cache_ttl_seconds",
        );
    }
    if p.max_token_bytes < 256 {
        return invalid("proxy.max_token_bytes", "must be at least 256");
    }
    let trusted_proxies = cidrs("proxy.trusted_proxies", &p.trusted_proxies)?;
    if !(100..=600_000).contains(&p.header_timeout_ms) {
        return invalid("proxy.header_timeout_ms", "must be between 100 and 600000");
    }
    if !(1..=3_600).contains(&p.keepalive_timeout_seconds) {
        return invalid(
            "proxy.keepalive_timeout_seconds",
            "must be between 1 and 3600",
        );
    }
    if p.max_connections > 10_000_000 {
        return invalid(
            "proxy.max_connections",
            "must be at most 10000000 (0: from the open-file limit)",
        );
    }
    let fairness = fairness(&p.fairness)?;
    Ok(ProxySettings {
        listen: p.listen,
        admin_listen: p.admin_listen,
        threads: p.threads,
        grace_period: secs(p.grace_period_seconds),
        upstream_connect_timeout: ms(p.upstream_connect_timeout_ms),
        upstream_read_timeout: ms(p.upstream_read_timeout_ms),
        cache_ttl: secs(p.cache_ttl_seconds),
        negative_cache_ttl: ms(p.negative_cache_ttl_ms),
        max_staleness: secs(p.max_staleness_seconds),
        change_poll_interval: ms(p.change_poll_interval_ms),
        metrics_top_tenants: p.metrics_top_tenants,
        max_token_bytes: p.max_token_bytes,
        trusted_proxies,
        header_timeout: ms(p.header_timeout_ms),
        keepalive_timeout: secs(p.keepalive_timeout_seconds),
        max_connections: (p.max_connections > 0).then_some(p.max_connections),
        fairness,
        tls: p.tls.as_ref().map(tls).transpose()?,
    })
}

fn fairness(f: &file::FairnessConfig) -> Result<FairnessSettings, Invalid> {
    if f.grace_refusals > 1_000_000 {
        return invalid("proxy.fairness.grace_refusals", "must be at most 1000000");
    }
    if !(1..=60_000).contains(&f.max_delay_ms) {
        return invalid("proxy.fairness.max_delay_ms", "must be between 1 and 60000");
    }
    if f.close_after_refusals != 0 && f.close_after_refusals <= f.grace_refusals {
        return invalid(
            "proxy.fairness.close_after_refusals",
            "must be greater than proxy.fairness.grace_refusals (0: never)",
        );
    }
    if f.max_held_connections > 10_000_000 {
        return invalid(
            "proxy.fairness.max_held_connections",
            "must be at most 10000000 (0: a quarter of proxy.max_connections)",
        );
    }
    Ok(FairnessSettings {
        enabled: f.enabled,
        grace_refusals: f.grace_refusals,
        max_delay: ms(f.max_delay_ms),
        close_after_refusals: f.close_after_refusals,
        max_held_connections: (f.max_held_connections > 0).then_some(f.max_held_connections),
        ip_refusals_per_second: f.ip_refusals_per_second,
    })
}

fn tls(t: &file::TlsConfig) -> Result<TlsSettings, Invalid> {
    let k = |f: &str| format!("proxy.tls.{f}");
    check_cert_and_key(&t.cert_file, &t.key_file, &k("cert_file"), &k("key_file"))?;
    if let Some(ca) = &t.client_ca_file {
        crate::pem::read_ca_certs(ca).map_err(|e| (k("client_ca_file"), e))?;
    }
    let mut sni = Vec::with_capacity(t.sni.len());
    for (i, s) in t.sni.iter().enumerate() {
        let k = |f: &str| format!("proxy.tls.sni[{i}].{f}");
        if s.server_names.is_empty() {
            return Err((k("server_names"), "must name at least one server".into()));
        }
        let mut names = Vec::with_capacity(s.server_names.len());
        for n in &s.server_names {
            let lower = n.trim().to_ascii_lowercase();
            if !valid_server_name(&lower) {
                return Err((
                    k("server_names"),
                    format!("{n:?} is not a DNS name or a *.wildcard of one"),
                ));
            }
            names.push(lower);
        }
        check_cert_and_key(&s.cert_file, &s.key_file, &k("cert_file"), &k("key_file"))?;
        sni.push(SniSettings {
            server_names: names,
            cert_file: s.cert_file.clone(),
            key_file: s.key_file.clone(),
        });
    }
    Ok(TlsSettings {
        listen: t.listen,
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        client_ca_file: t.client_ca_file.clone(),
        sni,
    })
}

fn check_cert_and_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    cert_key: &str,
    key_key: &str,
) -> Result<(), Invalid> {
    crate::pem::check_cert_and_key(cert, key).map_err(|(is_key, e)| {
        let name = if is_key { key_key } else { cert_key };
        (name.to_owned(), e)
    })
}

/// A DNS name (`api.example.com`) or a wildcard of one label (`*.example.com`).
pub fn valid_server_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn assertion(a: &file::AssertionConfig) -> Result<AssertionSettings, Invalid> {
    if a.issuer.trim().is_empty() || a.issuer.len() > 256 {
        return invalid("assertion.issuer", "must be 1 to 256 characters");
    }
    let algorithm = crate::assertion::AssertionAlg::parse(&a.algorithm)
        .or_else(|_| invalid("assertion.algorithm", "must be ES256 or EdDSA"))?;
    if a.publish_ahead_seconds > 86_400 {
        return invalid("assertion.publish_ahead_seconds", "must be at most 86400");
    }
    if a.rotate_after_seconds < 3_600 {
        return invalid("assertion.rotate_after_seconds", "must be at least 3600");
    }
    Ok(AssertionSettings {
        enabled: a.enabled,
        issuer: a.issuer.clone(),
        algorithm,
        bind_request: a.bind_request,
        publish_ahead: secs(a.publish_ahead_seconds),
        rotate_after: secs(a.rotate_after_seconds),
    })
}

fn demo_jwks_url(c: &Config) -> Result<String, Invalid> {
    match &c.upstream_demo.assertion_jwks_url {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => invalid(
            "upstream_demo.assertion_jwks_url",
            "must be an http:// or https:// URL",
        ),
        Some(u) => Ok(u.clone()),
        None => Ok(format!(
            "http://{}/.well-known/jwks.json",
            c.proxy.admin_listen
        )),
    }
}

/// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or bare addresses, each named by its
/// index when it does not parse.
pub fn cidrs(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let t = raw.trim();
            t.parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    (
                        format!("{key}[{i}]"),
                        format!("{raw:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                    )
                })
        })
        .collect()
}

fn admin(a: &file::AdminConfig) -> Result<AdminSettings, Invalid> {
    if a.bootstrap_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return invalid("admin.bootstrap_token", "must not be empty");
    }
    if a.secret_key.as_deref().is_some_and(|s| s.len() < 16) {
        return invalid("admin.secret_key", "must be at least 16 characters");
    }
    if !(60..=30 * 86_400).contains(&a.token_ttl_seconds) {
        return invalid("admin.token_ttl_seconds", "must be between 60 and 2592000");
    }
    if a.issuer.trim().is_empty() {
        return invalid("admin.issuer", "must not be empty");
    }
    if let Some(u) = &a.explain_proxy_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return invalid(
                "admin.explain_proxy_url",
                "must be an http:// or https:// URL",
            );
        }
    }
    Ok(AdminSettings {
        listen: a.listen,
        explain_proxy_url: a.explain_proxy_url.clone(),
        bootstrap_token: a.bootstrap_token.clone(),
        secret_key: a.secret_key.clone(),
        token_ttl: secs(a.token_ttl_seconds),
        issuer: a.issuer.clone(),
        trusted_proxies: cidrs("admin.trusted_proxies", &a.trusted_proxies)?,
    })
}

fn store_backend(url: &str) -> Option<StoreBackend> {
    if url.starts_with("sqlite:") {
        Some(StoreBackend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(StoreBackend::Postgres)
    } else {
        None
    }
}

fn store(s: &file::StoreConfig) -> Result<StoreSettings, Invalid> {
    let Some(backend) = store_backend(&s.url) else {
        return invalid("store.url", "must start with sqlite: or postgres://");
    };
    let max_connections = match s.max_connections {
        Some(0) => return invalid("store.max_connections", "must be positive"),
        Some(n) => n,
        // SQLite has one writer at a time, and each connection keeps its own page cache.
        None if backend == StoreBackend::Sqlite => 4,
        None => 10,
    };
    Ok(StoreSettings {
        url: s.url.clone(),
        backend,
        max_connections,
        data_dir: s.data_dir.clone(),
    })
}

fn ratelimit(c: &Config) -> Result<RateLimitSettings, Invalid> {
    let r = &c.redis;
    let redis = match &r.url {
        Some(u)
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://")) =>
        {
            return invalid("redis.url", "must start with redis:// or rediss://")
        }
        url => url.clone(),
    };
    if !(1..=10_000).contains(&r.timeout_ms) {
        return invalid("redis.timeout_ms", "must be between 1 and 10000");
    }
    if !(1..=60_000).contains(&r.connect_timeout_ms) {
        return invalid("redis.connect_timeout_ms", "must be between 1 and 60000");
    }
    if r.key_prefix.is_empty() {
        return invalid("redis.key_prefix", "must not be empty");
    }
    let backend = match (c.ratelimit.backend, redis) {
        (RateLimitBackend::Local, _) => LimiterBackend::Local,
        (RateLimitBackend::Redis, Some(url)) => LimiterBackend::Redis(RedisSettings {
            url,
            timeout: ms(r.timeout_ms),
            connect_timeout: ms(r.connect_timeout_ms),
            key_prefix: r.key_prefix.clone(),
        }),
        (RateLimitBackend::Redis, None) => {
            return invalid("redis.url", "required when ratelimit.backend = \"redis\"")
        }
    };
    Ok(RateLimitSettings {
        backend,
        fail_mode: c.ratelimit.fail_mode,
    })
}

fn metering(m: &file::MeteringConfig) -> Result<MeteringSettings, Invalid> {
    if !(10..=600_000).contains(&m.flush_interval_ms) {
        return invalid(
            "metering.flush_interval_ms",
            "must be between 10 and 600000",
        );
    }
    Ok(MeteringSettings {
        flush_interval: ms(m.flush_interval_ms),
        node_id: m.node_id.clone(),
    })
}

fn jwt(j: &file::JwtConfig) -> Result<JwtSettings, Invalid> {
    if j.leeway_seconds > 60 {
        return invalid("jwt.leeway_seconds", "must be at most 60");
    }
    let issuers = j
        .issuers
        .iter()
        .enumerate()
        .map(|(i, iss)| issuer(&format!("jwt.issuers[{i}]"), iss, j.allow_insecure_jwks))
        .collect::<Result<_, _>>()?;
    Ok(JwtSettings {
        issuers,
        leeway: secs(j.leeway_seconds),
        allow_insecure_jwks: j.allow_insecure_jwks,
    })
}

fn issuer(at: &str, iss: &IssuerConfig, allow_insecure: bool) -> Result<IssuerSettings, Invalid> {
    let k = |f: &str| format!("{at}.{f}");
    if iss.issuer.trim().is_empty() {
        return Err((k("issuer"), "must not be empty".into()));
    }
    if iss.audiences.is_empty() || iss.audiences.iter().any(|a| a.is_empty()) {
        return Err((
            k("audiences"),
            "must list at least one non-empty audience".into(),
        ));
    }
    if iss.algorithms.is_empty() {
        return Err((k("algorithms"), "must not be empty".into()));
    }
    if let Some(bad) = iss
        .algorithms
        .iter()
        .find(|a| !ALLOWED_JWT_ALGORITHMS.contains(&a.as_str()))
    {
        return Err((
            k("algorithms"),
            format!(
                "{bad:?} is not allowed (one of {})",
                ALLOWED_JWT_ALGORITHMS.join(", ")
            ),
        ));
    }
    let keys = match (&iss.jwks_url, &iss.public_key_file) {
        (Some(_), Some(_)) | (None, None) => {
            return Err((
                k("jwks_url"),
                "set exactly one of jwks_url and public_key_file".into(),
            ))
        }
        (Some(u), None) => {
            // Plain http only to this machine (local IdPs, tests), unless allowed.
            match crate::issuers::check_http_url(u) {
                Err(m) => return Err((k("jwks_url"), m)),
                Ok(crate::issuers::UrlScheme::Http) if !allow_insecure => {
                    return Err((
                        k("jwks_url"),
                        "must be an https:// URL (plain http only to a loopback host, \
                         unless [jwt] allow_insecure_jwks = true)"
                            .into(),
                    ))
                }
                Ok(_) => {}
            }
            IssuerKeys::JwksUrl(u.clone())
        }
        (None, Some(p)) => {
            if let Err(err) = std::fs::metadata(p) {
                return Err((
                    k("public_key_file"),
                    format!("cannot read {}: {err}", p.display()),
                ));
            }
            IssuerKeys::PublicKeyFile(p.clone())
        }
    };
    if iss.tenant_claim.is_empty() {
        return Err((k("tenant_claim"), "must not be empty".into()));
    }
    if iss.role_claim.is_empty() {
        return Err((k("role_claim"), "must not be empty".into()));
    }
    if iss.jwks_min_refetch_seconds == 0 || iss.jwks_refresh_seconds == 0 {
        return Err((k("jwks_refresh_seconds"), "must be positive".into()));
    }
    let max_life = crate::issuers::MAX_LIFETIME_SECONDS;
    if let Some(m) = iss.max_lifetime_seconds {
        if !(1..=max_life).contains(&m) {
            return Err((
                k("max_lifetime_seconds"),
                format!("must be between 1 and {max_life}"),
            ));
        }
    }
    Ok(IssuerSettings {
        issuer: iss.issuer.clone(),
        audiences: iss.audiences.clone(),
        algorithms: iss.algorithms.clone(),
        keys,
        tenant_claim: iss.tenant_claim.clone(),
        role_claim: iss.role_claim.clone(),
        jwks_min_refetch: secs(iss.jwks_min_refetch_seconds),
        jwks_refresh: secs(iss.jwks_refresh_seconds),
        max_lifetime: iss.max_lifetime_seconds.map(secs),
    })
}

fn routes(rs: &[RouteConfig]) -> Result<Vec<RouteSettings>, Invalid> {
    let mut seen = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(rs.len());
    for (i, r) in rs.iter().enumerate() {
        let k = |f: &str| format!("routes[{i}].{f}");
        if !r.prefix.starts_with('/') {
            return Err((k("prefix"), "must start with /".into()));
        }
        if !seen.insert(r.prefix.as_str()) {
            return Err((k("prefix"), format!("duplicate prefix {:?}", r.prefix)));
        }
        let UpstreamSettings {
            addrs: upstreams,
            tls,
            ..
        } = upstream(
            &r.upstream,
            r.ca_file.as_ref(),
            &k("upstream"),
            &k("ca_file"),
        )?;
        let name = match &r.name {
            Some(n) => n.clone(),
            None => r.prefix.clone(),
        };
        // A prefix as the name is taken as it is (metric labels are escaped).
        if r.name.is_some() && !valid_route_name(&name) {
            return Err((
                k("name"),
                "must be 1 to 128 printable ASCII characters without quotes or backslashes".into(),
            ));
        }
        if !names.insert(name.clone()) {
            return Err((k("name"), format!("duplicate route name {name:?}")));
        }
        let mut tenant_upstreams = std::collections::BTreeMap::new();
        for (tenant, up) in &r.tenant_upstreams {
            let key = k(&format!("tenant_upstreams.{tenant}"));
            if !crate::domain::valid_tenant_id(tenant) {
                return Err((key, "is not a tenant id ([a-z0-9][a-z0-9-]{1,62})".into()));
            }
            if r.public {
                return Err((
                    key,
                    "needs a protected route (a public route knows no tenant)".into(),
                ));
            }
            // An https:// silo is verified against the route's CAs when it has some.
            let ca = r
                .ca_file
                .as_ref()
                .filter(|_| up.addrs().iter().all(|a| a.starts_with("https://")));
            let settings = upstream(up, ca, &key, &k("ca_file"))?;
            tenant_upstreams.insert(tenant.clone(), settings);
        }
        if let Some(res) = &r.resource {
            if !crate::domain::valid_name_token(res) {
                return Err((k("resource"), "must match [a-z0-9_-]{1,64}".into()));
            }
        }
        let audience = match &r.audience {
            Some(a) if a.trim().is_empty() || a.len() > 256 || a.chars().any(char::is_control) => {
                return Err((
                    k("audience"),
                    "must be 1 to 256 printable characters".into(),
                ))
            }
            Some(a) => a.clone(),
            None => r.prefix.clone(),
        };
        out.push(RouteSettings {
            prefix: r.prefix.clone(),
            name,
            tenant_upstreams,
            upstreams,
            resource: r.resource.clone(),
            public: r.public,
            audience,
            bind_request: r.bind_request,
            assertion: r.assertion,
            tls,
            ca_file: r.ca_file.clone(),
        });
    }
    Ok(out)
}

/// Route names: printable ASCII without `"` or `\\` (they are metric label values).
fn valid_route_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// An upstream (one `host:port` or a list, `http://` or `https://`), checked:
/// `key` names it in errors, `ca_key` its CA file.
fn upstream(
    u: &file::Upstreams,
    ca_file: Option<&PathBuf>,
    key: &str,
    ca_key: &str,
) -> Result<UpstreamSettings, Invalid> {
    let (addrs, tls) = upstream_scheme(u.addrs()).map_err(|e| (key.to_owned(), e))?;
    if addrs.is_empty() {
        return invalid(key, "must name at least one host:port");
    }
    if let Some(bad) = addrs.iter().find(|a| !valid_host_port(a)) {
        return Err((key.to_owned(), format!("{bad:?} is not host:port")));
    }
    if let Some(ca) = ca_file {
        if !tls {
            return invalid(ca_key, "applies to https:// upstreams only");
        }
        crate::pem::read_ca_certs(ca).map_err(|e| (ca_key.to_owned(), e))?;
    }
    Ok(UpstreamSettings {
        addrs,
        tls,
        ca_file: ca_file.cloned(),
    })
}

fn upstream_pools(
    pools: &[file::UpstreamPoolConfig],
) -> Result<Vec<UpstreamPoolSettings>, Invalid> {
    let mut out: Vec<UpstreamPoolSettings> = Vec::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let k = |f: &str| format!("upstream_pools[{i}].{f}");
        if !crate::domain::valid_name_token(&p.name) {
            return Err((k("name"), "must match [a-z0-9_-]{1,64}".into()));
        }
        if out.iter().any(|o| o.name == p.name) {
            return Err((k("name"), format!("duplicate pool name {:?}", p.name)));
        }
        out.push(UpstreamPoolSettings {
            name: p.name.clone(),
            upstream: upstream(
                &p.upstream,
                p.ca_file.as_ref(),
                &k("upstream"),
                &k("ca_file"),
            )?,
        });
    }
    Ok(out)
}

fn autoscale(
    list: &[file::AutoscaleConfig],
    routes: &[RouteSettings],
) -> Result<Vec<AutoscaleSettings>, Invalid> {
    let mut out: Vec<AutoscaleSettings> = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let k = |f: &str| format!("autoscale[{i}].{f}");
        // A route by its name or its prefix; `up` without routes has the demo route.
        let route = if routes.is_empty() {
            (a.route == DEMO_ROUTE).then(|| DEMO_ROUTE.to_owned())
        } else {
            routes
                .iter()
                .find(|r| r.name == a.route)
                .or_else(|| routes.iter().find(|r| r.prefix == a.route))
                .map(|r| r.name.clone())
        };
        let Some(route) = route else {
            return Err((
                k("route"),
                format!(
                    "{:?} names no [[routes]] entry (by name or prefix)",
                    a.route
                ),
            ));
        };
        if out.iter().any(|o| o.route == route) {
            return Err((k("route"), format!("a second policy for route {route:?}")));
        }
        let policy = crate::scaling::Policy {
            target_rps_per_replica: a.target_rps_per_replica,
            min: a.min,
            max: a.max,
            cooldown_s: a.cooldown_seconds,
            stabilisation_s: a.scale_down_stabilisation_seconds,
        };
        policy.check().map_err(|(f, m)| (k(f), m))?;
        out.push(AutoscaleSettings { route, policy });
    }
    Ok(out)
}

fn scaling(s: &file::ScalingConfig) -> Result<ScalingSettings, Invalid> {
    if !(100..=3_600_000).contains(&s.evaluate_interval_ms) {
        return invalid(
            "scaling.evaluate_interval_ms",
            "must be between 100 and 3600000",
        );
    }
    if !(100..=3_600_000).contains(&s.signal_max_age_ms) {
        return invalid(
            "scaling.signal_max_age_ms",
            "must be between 100 and 3600000",
        );
    }
    Ok(ScalingSettings {
        evaluate_interval: ms(s.evaluate_interval_ms),
        signal_max_age: ms(s.signal_max_age_ms),
    })
}

fn log(l: &file::LogConfig) -> Result<LogSettings, Invalid> {
    let format = match l.format.as_str() {
        "auto" => LogFormat::Auto,
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        _ => return invalid("log.format", "must be \"auto\", \"json\" or \"text\""),
    };
    Ok(LogSettings {
        level: l.level.clone(),
        format,
    })
}

/// The upstreams without their scheme, and whether it is `https://`. Bare
/// `host:port` and `http://host:port` are plain HTTP; a route's upstreams share
/// one scheme.
fn upstream_scheme(addrs: Vec<String>) -> Result<(Vec<String>, bool), String> {
    let mut tls = None;
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let (bare, is_tls) = match (a.strip_prefix("https://"), a.strip_prefix("http://")) {
            (Some(rest), _) => (rest, true),
            (None, Some(rest)) => (rest, false),
            (None, None) => (a.as_str(), false),
        };
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        if tls.is_some_and(|t| t != is_tls) {
            return Err("mixes https:// and plain upstreams".into());
        }
        tls = Some(is_tls);
        out.push(bare.to_owned());
    }
    Ok((out, tls.unwrap_or(false)))
}

/// `host:port` with a numeric port and a non-empty host (IPv6 in brackets).
pub fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.contains('/')
                && !host.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// `[retention]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    pub usage_minute: Duration,
    pub usage_hour: Duration,
    pub flush_records: Duration,
    pub changes: Duration,
    pub audit: Duration,
    pub scaling_events: Duration,
    /// Between two rollup and retention passes.
    pub run_interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        // The file defaults are valid by construction.
        retention(&file::RetentionConfig::default()).unwrap_or(RetentionSettings {
            usage_minute: Duration::from_secs(7 * 86_400),
            usage_hour: Duration::from_secs(400 * 86_400),
            flush_records: Duration::from_secs(24 * 3_600),
            changes: Duration::from_secs(24 * 3_600),
            audit: Duration::from_secs(400 * 86_400),
            scaling_events: Duration::from_secs(400 * 86_400),
            run_interval: Duration::from_secs(60),
        })
    }
}

/// Largest retention accepted: 100 years.
const MAX_RETENTION_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

fn retention(r: &file::RetentionConfig) -> Result<RetentionSettings, Invalid> {
    let span = |key: &str, v: f64, unit: f64| -> Result<Duration, Invalid> {
        let secs = v * unit;
        if !v.is_finite() || v <= 0.0 || !(1.0..=MAX_RETENTION_SECONDS).contains(&secs) {
            return Err((
                format!("retention.{key}"),
                "must be a positive number of at least one second and at most 100 years".to_owned(),
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    };
    let usage_minute = span("usage_minute_days", r.usage_minute_days, 86_400.0)?;
    let usage_hour = span("usage_hour_days", r.usage_hour_days, 86_400.0)?;
    if usage_hour < usage_minute {
        return invalid(
            "retention.usage_hour_days",
            "must be at least retention.usage_minute_days",
        );
    }
    let run_interval = if r.run_interval_seconds.is_finite()
        && (0.1..=86_400.0).contains(&r.run_interval_seconds)
    {
        Duration::from_secs_f64(r.run_interval_seconds)
    } else {
        return invalid(
            "retention.run_interval_seconds",
            "must be between 0.1 and 86400",
        );
    };
    Ok(RetentionSettings {
        usage_minute,
        usage_hour,
        flush_records: span("flush_records_hours", r.flush_records_hours, 3_600.0)?,
        changes: span("changes_hours", r.changes_hours, 3_600.0)?,
        audit: span("audit_days", r.audit_days, 86_400.0)?,
        scaling_events: span("scaling_events_days", r.scaling_events_days, 86_400.0)?,
        run_interval,
    })
}
