//! The config model. The TOML file is read into a table, `TENANTGATE__SECTION__KEY`
//! environment overrides are applied on top, and the result is deserialized and
//! validated. Every error names the key and the file in one line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variable that overrides `admin.bootstrap_token`.
pub const ADMIN_TOKEN_ENV: &str = "TENANTGATE_ADMIN_TOKEN";
/// Prefix of the generic overrides: `TENANTGATE__STORE__URL=...` sets `store.url`.
pub const ENV_PREFIX: &str = "TENANTGATE__";

/// A config problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error in {source_name}: {key}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub message: String,
}

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
    pub routes: Vec<RouteConfig>,
    pub security: SecurityConfig,
    pub log: LogConfig,
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            bootstrap_token: None,
            secret_key: None,
            token_ttl_seconds: 3_600,
            issuer: "tenantgate".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDemoConfig {
    pub listen: SocketAddr,
    /// Where the demo keeps its rows; default: the control-plane store.
    pub store_url: Option<String>,
}

impl Default for UpstreamDemoConfig {
    fn default() -> Self {
        UpstreamDemoConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            store_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    /// Pool size; unset: 4 on SQLite (one writer at a time, and each connection
    /// keeps its own page cache), 10 on PostgreSQL. See [`StoreConfig::pool_size`].
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

impl StoreConfig {
    /// The configured pool size, or the backend's default.
    pub fn pool_size(&self) -> u32 {
        self.max_connections
            .unwrap_or(if self.url.starts_with("sqlite:") {
                4
            } else {
                10
            })
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
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuers: Vec::new(),
            leeway_seconds: 30,
        }
    }
}

/// Asymmetric algorithms an issuer may allow; HMAC and `none` are never accepted.
pub const ALLOWED_JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

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
    /// `json` or `text`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "json".into(),
        }
    }
}

impl Config {
    /// Reads `path` (or the built-in defaults when `None`), applies environment
    /// overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    key: "(file)".into(),
                    message: format!("cannot read: {e}"),
                })?;
                Self::from_toml_str(&text, &name, &env)
            }
            None => Self::from_toml_str("", "(built-in defaults)", &env),
        }
    }

    /// Parses TOML text with the given environment (`(name, value)` pairs).
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            err(
                &format!("line {line}"),
                e.message().replace('\n', " ").trim().to_owned(),
            )
        })?;
        for (name, value) in env {
            if name == ADMIN_TOKEN_ENV {
                set_path(
                    &mut table,
                    &["admin", "bootstrap_token"],
                    toml::Value::String(value.clone()),
                );
            } else if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if path.iter().any(|p| p.is_empty()) {
                    continue;
                }
                let parsed = format!("v = {value}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(value.clone()));
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                set_path(&mut table, &refs, parsed);
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                };
                let msg = e.inner().to_string().replace('\n', " ");
                let msg = msg.trim();
                // toml repeats the key at the end; it is already in front.
                let msg = msg
                    .strip_suffix(&format!("in `{key}`"))
                    .map(str::trim_end)
                    .unwrap_or(msg);
                err(&key, msg.to_owned())
            })?;
        config
            .validate()
            .map_err(|(key, message): (String, String)| err(&key, message))?;
        Ok(config)
    }

    /// The bootstrap token, required by `tenantgate admin`.
    pub fn require_bootstrap_token(&self, source_name: &str) -> Result<&str, ConfigError> {
        self.admin
            .bootstrap_token
            .as_deref()
            .ok_or_else(|| ConfigError {
                source_name: source_name.to_owned(),
                key: "admin.bootstrap_token".into(),
                message: format!("required (or set {ADMIN_TOKEN_ENV})"),
            })
    }

    pub fn api_key_pepper(&self) -> Option<&[u8]> {
        self.security.api_key_pepper.as_deref().map(str::as_bytes)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let e = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        if !(1..=256).contains(&self.proxy.threads) {
            return e("proxy.threads", "must be between 1 and 256");
        }
        if self.proxy.grace_period_seconds > 3_600 {
            return e("proxy.grace_period_seconds", "must be at most 3600");
        }
        if self.proxy.upstream_connect_timeout_ms == 0 {
            return e("proxy.upstream_connect_timeout_ms", "must be positive");
        }
        if self.proxy.upstream_read_timeout_ms == 0 {
            return e("proxy.upstream_read_timeout_ms", "must be positive");
        }
        if self.proxy.change_poll_interval_ms == 0 || self.proxy.change_poll_interval_ms > 60_000 {
            return e(
                "proxy.change_poll_interval_ms",
                "must be between 1 and 60000",
            );
        }
        if self.proxy.max_staleness_seconds < self.proxy.cache_ttl_seconds {
            return e(
                "proxy.max_staleness_seconds",
                "must be at least proxy.cache_ttl_seconds",
            );
        }
        if self.proxy.max_token_bytes < 256 {
            return e("proxy.max_token_bytes", "must be at least 256");
        }
        if let Some(t) = &self.admin.bootstrap_token {
            if t.trim().is_empty() {
                return e("admin.bootstrap_token", "must not be empty");
            }
        }
        if let Some(s) = &self.admin.secret_key {
            if s.len() < 16 {
                return e("admin.secret_key", "must be at least 16 characters");
            }
        }
        if !(60..=30 * 86_400).contains(&self.admin.token_ttl_seconds) {
            return e("admin.token_ttl_seconds", "must be between 60 and 2592000");
        }
        if self.admin.issuer.trim().is_empty() {
            return e("admin.issuer", "must not be empty");
        }
        if !is_store_url(&self.store.url) {
            return e("store.url", "must start with sqlite: or postgres://");
        }
        if let Some(u) = &self.upstream_demo.store_url {
            if !is_store_url(u) {
                return e(
                    "upstream_demo.store_url",
                    "must start with sqlite: or postgres://",
                );
            }
        }
        if self.store.max_connections == Some(0) {
            return e("store.max_connections", "must be positive");
        }
        if let Some(u) = &self.redis.url {
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                return e("redis.url", "must start with redis:// or rediss://");
            }
        }
        if !(1..=10_000).contains(&self.redis.timeout_ms) {
            return e("redis.timeout_ms", "must be between 1 and 10000");
        }
        if !(1..=60_000).contains(&self.redis.connect_timeout_ms) {
            return e("redis.connect_timeout_ms", "must be between 1 and 60000");
        }
        if self.redis.key_prefix.is_empty() {
            return e("redis.key_prefix", "must not be empty");
        }
        if self.ratelimit.backend == RateLimitBackend::Redis && self.redis.url.is_none() {
            return e("redis.url", "required when ratelimit.backend = \"redis\"");
        }
        if !(10..=600_000).contains(&self.metering.flush_interval_ms) {
            return e(
                "metering.flush_interval_ms",
                "must be between 10 and 600000",
            );
        }
        if self.jwt.leeway_seconds > 60 {
            return e("jwt.leeway_seconds", "must be at most 60");
        }
        for (i, iss) in self.jwt.issuers.iter().enumerate() {
            let k = |f: &str| format!("jwt.issuers[{i}].{f}");
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
            match (&iss.jwks_url, &iss.public_key_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err((
                        k("jwks_url"),
                        "set exactly one of jwks_url and public_key_file".into(),
                    ))
                }
                (Some(u), None) => {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        return Err((k("jwks_url"), "must be an http:// or https:// URL".into()));
                    }
                }
                (None, Some(p)) => {
                    if let Err(err) = std::fs::metadata(p) {
                        return Err((
                            k("public_key_file"),
                            format!("cannot read {}: {err}", p.display()),
                        ));
                    }
                }
            }
            if iss.tenant_claim.is_empty() {
                return Err((k("tenant_claim"), "must not be empty".into()));
            }
            if iss.role_claim.is_empty() {
                return Err((k("role_claim"), "must not be empty".into()));
            }
            if iss.jwks_min_refetch_seconds == 0 || iss.jwks_refresh_seconds == 0 {
                return Err((k("jwks_refresh_seconds"), "must be positive".into()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let k = |f: &str| format!("routes[{i}].{f}");
            if !r.prefix.starts_with('/') {
                return Err((k("prefix"), "must start with /".into()));
            }
            if !seen.insert(r.prefix.as_str()) {
                return Err((k("prefix"), format!("duplicate prefix {:?}", r.prefix)));
            }
            let addrs = r.upstream.addrs();
            if addrs.is_empty() {
                return Err((k("upstream"), "must name at least one host:port".into()));
            }
            if let Some(bad) = addrs.iter().find(|a| !valid_host_port(a)) {
                return Err((k("upstream"), format!("{bad:?} is not host:port")));
            }
            if let Some(res) = &r.resource {
                if !crate::domain::valid_name_token(res) {
                    return Err((k("resource"), "must match [a-z0-9_-]{1,64}".into()));
                }
            }
        }
        if !matches!(self.log.format.as_str(), "json" | "text") {
            return e("log.format", "must be \"json\" or \"text\"");
        }
        Ok(())
    }
}

fn is_store_url(u: &str) -> bool {
    u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://")
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

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
    cur.insert((*last).to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml", &[])
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.store.url, "sqlite://data/tenantgate.db");
        assert_eq!(c.metering.flush_interval_ms, 1000);
        assert_eq!(c.store.pool_size(), 4);
    }

    #[test]
    fn pool_size_defaults_per_backend_and_refuses_zero() {
        let pg = parse("[store]\nurl = \"postgres://u@127.0.0.1/db\"").unwrap();
        assert_eq!(pg.store.pool_size(), 10);
        let set = parse("[store]\nmax_connections = 7").unwrap();
        assert_eq!(set.store.pool_size(), 7);
        let err = parse("[store]\nmax_connections = 0").unwrap_err();
        assert!(err.to_string().contains("store.max_connections"), "{err}");
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(
            r#"
[proxy]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
[admin]
listen = "127.0.0.1:8081"
bootstrap_token = "tok"
[upstream_demo]
listen = "127.0.0.1:8082"
[store]
url = "sqlite://data/tenantgate.db"
[redis]
url = "redis://127.0.0.1:6379"
[ratelimit]
backend = "local"
fail_mode = "open"
[metering]
flush_interval_ms = 1000
[[jwt.issuers]]
issuer = "https://idp.example.com"
audiences = ["tenantgate"]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:9999/.well-known/jwks.json"
tenant_claim = "tenant_id"
role_claim = "role"
[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:8082"
resource = "resources"
public = false
[[routes]]
prefix = "/pub/"
upstream = ["127.0.0.1:8082", "127.0.0.1:8083"]
public = true
"#,
        )
        .unwrap();
        assert_eq!(c.jwt.issuers.len(), 1);
        assert_eq!(c.routes[1].upstream.addrs().len(), 2);
        assert_eq!(c.admin.bootstrap_token.as_deref(), Some("tok"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[proxy]\nlisten = \"nope\"", "proxy.listen"),
            ("[metering]\nflush_interval_ms = \"abc\"", "metering.flush_interval_ms"),
            ("[metering]\nflush_interval_ms = 0", "metering.flush_interval_ms"),
            ("[ratelimit]\nbackend = \"memcached\"", "ratelimit.backend"),
            ("[ratelimit]\nfail_mode = \"maybe\"", "ratelimit.fail_mode"),
            ("[ratelimit]\nbackend = \"redis\"", "redis.url"),
            ("[store]\nurl = \"mysql://x\"", "store.url"),
            ("[proxy]\nlistn = \"127.0.0.1:1\"", "proxy"),
            ("[[routes]]\nprefix = \"api\"\nupstream = \"127.0.0.1:1\"", "routes[0].prefix"),
            ("[[routes]]\nprefix = \"/a\"\nupstream = \"localhost\"", "routes[0].upstream"),
            (
                "[[jwt.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\njwks_url = \"http://x\"",
                "jwt.issuers[0].algorithms",
            ),
            (
                "[[jwt.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\npublic_key_file = \"/nonexistent.pem\"",
                "jwt.issuers[0].public_key_file",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.key.starts_with(key),
                "{text:?}: got key {:?} ({err})",
                err.key
            );
            let line = err.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("test.toml"), "{line}");
        }
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let err = parse("[proxy\nlisten=").unwrap_err();
        assert!(!err.to_string().contains('\n'));
        assert!(err.key.starts_with("line"));
    }

    #[test]
    fn env_overrides() {
        let env = vec![
            (ADMIN_TOKEN_ENV.to_owned(), "from-env".to_owned()),
            (
                "TENANTGATE__METERING__FLUSH_INTERVAL_MS".to_owned(),
                "250".to_owned(),
            ),
            (
                "TENANTGATE__STORE__URL".to_owned(),
                "postgres://u@h/db".to_owned(),
            ),
        ];
        let c = Config::from_toml_str("[admin]\nbootstrap_token = \"file\"", "t", &env).unwrap();
        assert_eq!(c.admin.bootstrap_token.as_deref(), Some("from-env"));
        assert_eq!(c.metering.flush_interval_ms, 250);
        assert_eq!(c.store.url, "postgres://u@h/db");
        let bad = vec![(
            "TENANTGATE__METERING__FLUSH_INTERVAL_MS".to_owned(),
            "x".to_owned(),
        )];
        let err = Config::from_toml_str("", "t", &bad).unwrap_err();
        assert_eq!(err.key, "metering.flush_interval_ms");
    }

    #[test]
    fn admin_requires_a_token() {
        let c = parse("").unwrap();
        let err = c.require_bootstrap_token("f.toml").unwrap_err();
        assert_eq!(err.key, "admin.bootstrap_token");
    }
}
