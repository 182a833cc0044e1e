//! Domain model: tenants, tiers, roles, RBAC permissions, rate limits, API keys, users.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A tenant's tier: the name of its plan (`free`, `pro`, `enterprise` exist from
/// the start; more may be created as data).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tier(Cow<'static, str>);

#[allow(non_upper_case_globals)]
impl Tier {
    pub const Free: Tier = Tier(Cow::Borrowed("free"));
    pub const Pro: Tier = Tier(Cow::Borrowed("pro"));
    pub const Enterprise: Tier = Tier(Cow::Borrowed("enterprise"));
    /// The built-in plans.
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Enterprise];

    pub fn new(name: &str) -> Self {
        match name {
            "free" => Tier::Free,
            "pro" => Tier::Pro,
            "enterprise" => Tier::Enterprise,
            other => Tier(Cow::Owned(other.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_builtin(&self) -> bool {
        Tier::ALL.contains(self)
    }

    /// The built-in plans' limits (free 60/60 s, pro 1000/60 s, enterprise
    /// 10000/60 s), also the last resort for a plan that cannot be found.
    pub fn default_rate_limit(&self) -> RateLimit {
        let max_requests = match self.as_str() {
            "pro" => 1000,
            "enterprise" => 10_000,
            _ => 60,
        };
        RateLimit {
            max_requests,
            window_seconds: 60,
            burst: None,
        }
    }
}

/// Plan names: `[a-z0-9_][a-z0-9_-]{0,63}`.
impl FromStr for Tier {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if valid_name_token(s) {
            Ok(Tier::new(s))
        } else {
            Err(())
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quota's period: a UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }

    /// The period holding `at_ms` (unix ms): `(start, end)` in unix ms, UTC.
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        use chrono::{Datelike, TimeZone};
        let at = Utc
            .timestamp_millis_opt(at_ms)
            .single()
            .unwrap_or_else(Utc::now);
        let day = at.date_naive();
        let (start, end) = match self {
            QuotaPeriod::Day => (day, day.succ_opt().unwrap_or(day)),
            QuotaPeriod::Month => {
                let first = day.with_day(1).unwrap_or(day);
                let next = if first.month() == 12 {
                    first
                        .with_year(first.year() + 1)
                        .and_then(|d| d.with_month(1))
                } else {
                    first.with_month(first.month() + 1)
                };
                (first, next.unwrap_or(first))
            }
        };
        let ms = |d: chrono::NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
                .unwrap_or(at_ms)
        };
        (ms(start), ms(end))
    }
}

impl FromStr for QuotaPeriod {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "day" => Ok(QuotaPeriod::Day),
            "month" => Ok(QuotaPeriod::Month),
            _ => Err(()),
        }
    }
}

/// Requests per UTC day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quota {
    pub period: QuotaPeriod,
    pub max_requests: u64,
}

/// A plan: the limits of every tenant whose tier names it and that has not set
/// its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub rate_limit: RateLimit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// A tenant's own limits, set apart from its plan's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnLimits {
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

impl FromStr for TenantStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "suspended" => Ok(TenantStatus::Suspended),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: Tier,
    pub status: TenantStatus,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Client addresses the tenant's requests may come from; `None`: any.
    pub allowed_cidrs: Option<Vec<String>>,
    /// The `[[upstream_pools]]` entry its requests go to; `None`: the route's upstream.
    pub upstream_pool: Option<String>,
}

/// Tenant ids: `[a-z0-9][a-z0-9-]{1,62}`.
pub fn valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    (2..=63).contains(&b.len())
        && matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
        && b[1..]
            .iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Role names and resource names: `[a-z0-9_][a-z0-9_-]{0,63}`.
/// The plans that exist from the start and are never deleted.
pub const BUILT_IN_PLANS: [&str; 3] = ["free", "pro", "enterprise"];

pub fn valid_name_token(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// What a request does to a resource; derived from the HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

impl Action {
    /// GET/HEAD/OPTIONS → read, POST → create, PUT/PATCH → update, DELETE → delete.
    pub fn from_method(method: &str) -> Option<Action> {
        match method {
            "GET" | "HEAD" | "OPTIONS" => Some(Action::Read),
            "POST" => Some(Action::Create),
            "PUT" | "PATCH" => Some(Action::Update),
            "DELETE" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One grant: `action` is an action name or `*`; `resource` a resource name or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    pub action: String,
    pub resource: String,
}

impl Permission {
    pub fn new(action: &str, resource: &str) -> Self {
        Permission {
            action: action.to_owned(),
            resource: resource.to_owned(),
        }
    }

    pub fn matches(&self, action: Action, resource: &str) -> bool {
        (self.action == "*" || self.action == action.as_str())
            && (self.resource == "*" || self.resource == resource)
    }

    /// A permission an admin may store: a known action or `*`, a resource token or `*`.
    pub fn is_valid(&self) -> bool {
        matches!(
            self.action.as_str(),
            "*" | "read" | "create" | "update" | "delete"
        ) && (self.resource == "*" || valid_name_token(&self.resource))
    }
}

/// A role's permissions within one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub role: String,
    pub permissions: Vec<Permission>,
}

impl Policy {
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        self.permissions.iter().any(|p| p.matches(action, resource))
    }
}

/// A policy compiled for the hot path: the actions granted on every resource as a
/// bit set (one test for `*` grants, no strings compared), then the actions
/// granted per named resource. Decides exactly as [`Policy::allows`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    everywhere: u8,
    named: Box<[(u8, Box<str>)]>,
}

impl Action {
    const ALL: [Action; 4] = [Action::Read, Action::Create, Action::Update, Action::Delete];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl Grants {
    pub fn new(policy: &Policy) -> Self {
        let mut everywhere = 0u8;
        let mut named: Vec<(u8, Box<str>)> = Vec::new();
        for p in &policy.permissions {
            let bits = Action::ALL
                .iter()
                .filter(|a| p.action == "*" || p.action == a.as_str())
                .fold(0u8, |m, a| m | a.bit());
            if bits == 0 {
                continue;
            }
            if p.resource == "*" {
                everywhere |= bits;
            } else if let Some(e) = named.iter_mut().find(|(_, r)| **r == *p.resource) {
                e.0 |= bits;
            } else {
                named.push((bits, p.resource.as_str().into()));
            }
        }
        // Resources already covered everywhere need no entry of their own.
        named.retain(|(bits, _)| bits & !everywhere != 0);
        Grants {
            everywhere,
            named: named.into(),
        }
    }

    pub fn allows(&self, action: Action, resource: &str) -> bool {
        let bit = action.bit();
        self.everywhere & bit != 0
            || self
                .named
                .iter()
                .any(|(bits, r)| bits & bit != 0 && **r == *resource)
    }
}

/// The seed's DEFAULT_ROLES, created for every new tenant.
pub fn default_policies() -> Vec<Policy> {
    let p = Permission::new;
    vec![
        Policy {
            role: "admin".into(),
            permissions: vec![p("*", "*")],
        },
        Policy {
            role: "developer".into(),
            permissions: vec![
                p("read", "*"),
                p("create", "resources"),
                p("update", "resources"),
                p("delete", "resources"),
                p("create", "jobs"),
                p("read", "jobs"),
                p("create", "api_keys"),
                p("read", "api_keys"),
                p("delete", "api_keys"),
            ],
        },
        Policy {
            role: "read_only".into(),
            permissions: vec![p("read", "*")],
        },
    ]
}

/// A tenant's token bucket: refill `max_requests / window_seconds` per second,
/// capacity `burst` (default `max_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub max_requests: u64,
    pub window_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl RateLimit {
    pub fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.max_requests)
    }

    /// Tokens per second.
    pub fn refill_per_sec(&self) -> f64 {
        if self.window_seconds == 0 {
            0.0
        } else {
            self.max_requests as f64 / self.window_seconds as f64
        }
    }
}

/// An API key as stored: never the secret, only its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub prefix: String,
    pub digest: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's own limits and restrictions (none by default).
    pub extras: KeyExtras,
}

/// What a key may carry besides its role: its own rate limit (spent besides the
/// tenant's), scopes (the key may do only what both its role and these allow) and
/// an IP allow-list. `None` everywhere is the common case and costs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyExtras {
    pub rate_limit: Option<RateLimit>,
    pub scopes: Option<Vec<Permission>>,
    pub allowed_cidrs: Option<Vec<String>>,
}

impl KeyExtras {
    pub fn is_empty(&self) -> bool {
        self.rate_limit.is_none() && self.scopes.is_none() && self.allowed_cidrs.is_none()
    }
}

impl ApiKeyRecord {
    /// Usable at `now`: not revoked and not expired.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Whether a user may log in (and its login tokens count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }
}

impl FromStr for UserStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "active" => Ok(UserStatus::Active),
            "disabled" => Ok(UserStatus::Disabled),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub role: String,
    pub password_hash: String,
    pub status: UserStatus,
    /// Carried by login tokens as `tv`; bumped by every change that ends the
    /// user's sessions, so a token with another value is refused.
    pub token_version: i64,
    pub created_at: DateTime<Utc>,
}

impl UserRecord {
    /// Whether a login token of this user with `role` and token version `tv`
    /// still speaks for it.
    pub fn accepts_token(&self, role: &str, tv: i64) -> bool {
        self.status == UserStatus::Active && self.token_version == tv && self.role == role
    }
}

/// A loose but useful email check: one `@`, a non-empty local part, a dotted domain.
pub fn valid_email(email: &str) -> bool {
    if email.chars().count() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_grants_decide_exactly_like_the_policy() {
        let actions = ["*", "read", "create", "update", "delete", "bogus"];
        let resources = ["*", "resources", "jobs", "api_keys"];
        let all: Vec<Permission> = actions
            .iter()
            .flat_map(|a| resources.iter().map(move |r| Permission::new(a, r)))
            .collect();
        let mut policies: Vec<Policy> = default_policies();
        policies.push(Policy {
            role: "none".into(),
            permissions: vec![],
        });
        // Every policy of up to two permissions over the grid above, plus a few
        // longer ones with repeats and overlaps.
        for a in &all {
            for b in &all {
                policies.push(Policy {
                    role: "r".into(),
                    permissions: vec![a.clone(), b.clone()],
                });
            }
        }
        policies.push(Policy {
            role: "r".into(),
            permissions: all.clone(),
        });
        for p in &policies {
            let g = Grants::new(p);
            for action in Action::ALL {
                for resource in ["resources", "jobs", "api_keys", "other", "*", ""] {
                    assert_eq!(
                        g.allows(action, resource),
                        p.allows(action, resource),
                        "{p:?} {action:?} {resource}"
                    );
                }
            }
        }
        assert!(!Grants::default().allows(Action::Read, "x"));
    }

    #[test]
    fn tenant_id_rules() {
        assert!(valid_tenant_id("acme"));
        assert!(valid_tenant_id("a1"));
        assert!(valid_tenant_id("0-corp"));
        assert!(!valid_tenant_id("a"));
        assert!(!valid_tenant_id("-acme"));
        assert!(!valid_tenant_id("Acme"));
        assert!(!valid_tenant_id("acme_corp"));
        assert!(!valid_tenant_id(&"a".repeat(64)));
        assert!(valid_tenant_id(&"a".repeat(63)));
    }

    #[test]
    fn default_policies_match_the_seed() {
        let pols = default_policies();
        let get = |r: &str| pols.iter().find(|p| p.role == r).cloned().unwrap();
        let admin = get("admin");
        assert!(admin.allows(Action::Delete, "anything"));
        let dev = get("developer");
        assert!(dev.allows(Action::Read, "billing"));
        assert!(dev.allows(Action::Delete, "resources"));
        assert!(!dev.allows(Action::Delete, "jobs"));
        assert!(!dev.allows(Action::Update, "api_keys"));
        let ro = get("read_only");
        assert!(ro.allows(Action::Read, "resources"));
        assert!(!ro.allows(Action::Create, "resources"));
    }

    #[test]
    fn method_to_action() {
        assert_eq!(Action::from_method("GET"), Some(Action::Read));
        assert_eq!(Action::from_method("HEAD"), Some(Action::Read));
        assert_eq!(Action::from_method("PATCH"), Some(Action::Update));
        assert_eq!(Action::from_method("BREW"), None);
    }

    #[test]
    fn quota_periods_are_utc_calendar_days_and_months() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        let (a, b) = QuotaPeriod::Day.bounds(at("2026-11-30T05:13:00Z"));
        assert_eq!(
            (a, b),
            (at("2026-11-30T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        let (a, b) = QuotaPeriod::Month.bounds(at("2026-12-31T23:59:59Z"));
        assert_eq!(
            (a, b),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        let (a, b) = QuotaPeriod::Month.bounds(at("2028-02-10T00:00:00Z"));
        assert_eq!(
            (a, b),
            (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn tiers_are_plan_names() {
        assert_eq!("pro".parse::<Tier>(), Ok(Tier::Pro));
        assert_eq!("gold".parse::<Tier>().unwrap().as_str(), "gold");
        assert!("Gold plan".parse::<Tier>().is_err());
        assert_eq!(Tier::Enterprise.default_rate_limit().max_requests, 10_000);
        assert_eq!(serde_json::to_string(&Tier::Pro).unwrap(), "\"pro\"");
    }

    #[test]
    fn emails() {
        assert!(valid_email("a@b.co"));
        assert!(!valid_email("nope"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a b@c.de"));
        assert!(!valid_email("@c.de"));
    }

    #[test]
    fn permission_validation() {
        assert!(Permission::new("*", "*").is_valid());
        assert!(Permission::new("read", "resources").is_valid());
        assert!(!Permission::new("write", "resources").is_valid());
        assert!(!Permission::new("read", "Res ources").is_valid());
    }
}

/// Longest host name (RFC 1035), characters.
pub const MAX_HOSTNAME_CHARS: usize = 253;

/// A tenant domain in its stored form: trimmed, lowercase, without a trailing dot;
/// at least two labels of `[a-z0-9-]` (1–63 characters, no leading or trailing
/// `-`), the last one not all digits (so never an IP address). Unicode names must
/// come in their punycode (`xn--`) form. `Err`: why not.
pub fn normalize_hostname(raw: &str) -> Result<String, &'static str> {
    let host = raw.trim();
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("must not be empty");
    }
    if !host.is_ascii() {
        return Err("must be ASCII: give an internationalised name in its punycode (xn--) form");
    }
    if host.len() > MAX_HOSTNAME_CHARS {
        return Err("must be at most 253 characters");
    }
    let host = host.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err("must be a fully qualified name (at least two labels, e.g. api.acme.example)");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each label must be 1 to 63 characters");
        }
        if !l
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(
                "may contain only letters, digits, '-' and '.' (no ports, paths or wildcards)",
            );
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a label must not start or end with '-'");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err("must be a host name, not an IP address");
    }
    Ok(host)
}

/// The host a request names (its `Host` header or URI authority) as a tenant
/// domain would be stored: lowercase, without port or trailing dot. `None` when
/// it cannot be a tenant domain (an IP literal, empty).
pub fn request_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        return None;
    }
    let host = raw.rsplit_once(':').map_or(raw, |(h, port)| {
        if port.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            raw
        }
    });
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod hostname_tests {
    use super::*;

    #[test]
    fn tenant_domains_are_normalised_or_refused() {
        assert_eq!(
            normalize_hostname(" API.Acme.Example. ").unwrap(),
            "api.acme.example"
        );
        assert_eq!(
            normalize_hostname("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "localhost",
            "acme..example",
            "-acme.example",
            "acme-.example",
            "*.acme.example",
            "acme.example:8443",
            "acme.example/path",
            "10.0.0.1",
            "bücher.example",
            "a b.example",
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad}");
        }
        assert!(normalize_hostname(&format!("{}.example", "a".repeat(64))).is_err());
        assert!(normalize_hostname(&format!("{}.example", "a.".repeat(125))).is_err());
    }

    #[test]
    fn request_hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(
            request_host("API.acme.example:8443").as_deref(),
            Some("api.acme.example")
        );
        assert_eq!(
            request_host("api.acme.example.").as_deref(),
            Some("api.acme.example")
        );
        assert_eq!(request_host("[::1]:8080"), None);
        assert_eq!(request_host(""), None);
    }
}
