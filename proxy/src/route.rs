//! Stage 1: route. Longest matching prefix → upstream cluster, resource name, public
//! or protected. Paths that could be read differently by the upstream (dot segments,
//! encoded slashes) are refused before matching, so a public prefix can never be
//! used to reach a protected one.

use crate::signals::RouteSignals;
use crate::tls::UpstreamTls;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::protocols::l4::socket::SocketAddr;
use std::collections::HashMap;
use std::sync::Arc;
use tenantgate_core::config::RouteSettings;

pub type Upstream = LoadBalancer<RoundRobin>;

/// One upstream cluster: a route's, a silo tenant's or a pool's.
pub struct UpstreamGroup {
    pub addrs: Vec<String>,
    pub upstream: Arc<Upstream>,
    /// The address when the upstream is one backend: it is used whatever its
    /// health (there is nothing else to try), so no selection runs per request.
    pub single: Option<SocketAddr>,
    /// `https://` upstreams: SNI per backend and the CAs to verify them with.
    pub tls: Option<Arc<UpstreamTls>>,
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("addrs", &self.addrs)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl UpstreamGroup {
    pub fn new(addrs: Vec<String>, upstream: Arc<Upstream>, tls: Option<Arc<UpstreamTls>>) -> Self {
        let backends = upstream.backends().get_backend();
        let single = match backends.len() {
            1 => backends.iter().next().map(|b| b.addr.clone()),
            _ => None,
        };
        UpstreamGroup {
            addrs,
            upstream,
            single,
            tls,
        }
    }

    /// A group without health checks (tests, benches).
    pub fn unchecked(addrs: &[String]) -> Result<Self, String> {
        let lb =
            Upstream::try_from_iter(addrs.iter().map(String::as_str)).map_err(|e| e.to_string())?;
        Ok(Self::new(addrs.to_vec(), Arc::new(lb), None))
    }

    /// The backend for the next request: round-robin over the healthy ones; when
    /// every backend is marked unhealthy, one anyway rather than fail blind.
    pub fn select(&self) -> Option<SocketAddr> {
        if let Some(a) = &self.single {
            return Some(a.clone());
        }
        self.upstream
            .select(b"", 256)
            .or_else(|| self.upstream.select_with(b"", 256, |_, _| true))
            .map(|b| b.addr)
    }
}

pub struct Route {
    pub prefix: String,
    /// The route's name in scaling signals and metrics.
    pub name: Arc<str>,
    pub resource: Option<String>,
    pub public: bool,
    /// `aud` of the assertions sent on this route.
    pub audience: Arc<str>,
    /// Per-request assertions on this route (`None`: the `[assertion]` default).
    pub bind_request: Option<bool>,
    /// Whether this route's requests carry the assertion at all.
    pub assertion: bool,
    /// The route's own upstream (everyone's but the silo tenants').
    pub upstream: Arc<UpstreamGroup>,
    /// Silo tenants' own upstreams, by tenant id.
    pub tenant_upstreams: HashMap<Box<str>, Arc<UpstreamGroup>>,
    /// Request rate, in-flight and latency of the requests forwarded here.
    pub signals: Arc<RouteSignals>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("prefix", &self.prefix)
            .field("resource", &self.resource)
            .field("public", &self.public)
            .field("upstream", &self.upstream)
            .field("tenant_upstreams", &self.tenant_upstreams.len())
            .finish()
    }
}

impl Route {
    pub fn new(rc: &RouteSettings, upstream: Arc<UpstreamGroup>) -> Self {
        Route {
            prefix: rc.prefix.clone(),
            name: Arc::from(rc.name.as_str()),
            resource: rc.resource.clone(),
            public: rc.public,
            audience: Arc::from(rc.audience.as_str()),
            bind_request: rc.bind_request,
            assertion: rc.assertion,
            upstream,
            tenant_upstreams: HashMap::new(),
            signals: Arc::new(RouteSignals::default()),
        }
    }

    /// The RBAC resource: the configured one, else the first path segment after the prefix.
    pub fn resource_for<'a>(&'a self, path: &'a str) -> &'a str {
        if let Some(r) = &self.resource {
            return r;
        }
        let rest = path.get(self.prefix.len()..).unwrap_or("");
        let rest = rest.trim_start_matches('/');
        rest.split(['/', '?', ';']).next().unwrap_or("")
    }
}

/// What routing reads: the route table and the `[[upstream_pools]]` by name.
#[derive(Debug, Default)]
pub struct Routing {
    pub table: RouteTable,
    pub pools: HashMap<Box<str>, Arc<UpstreamGroup>>,
}

/// The routing in force: read once per request, replaced whole by a reload
/// (SIGHUP). A request keeps the route it matched, even across a reload.
#[derive(Debug)]
pub struct LiveRoutes(arc_swap::ArcSwap<Routing>);

impl LiveRoutes {
    pub fn new(routing: Routing) -> Self {
        LiveRoutes(arc_swap::ArcSwap::from_pointee(routing))
    }

    /// The longest prefix that matches `path`, in the table in force now.
    pub fn find(&self, path: &str) -> Option<Arc<Route>> {
        self.0.load().table.find(path).cloned()
    }

    /// The routing in force now (held briefly: a reload waits for no reader).
    pub fn load(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.0.load()
    }

    pub fn current(&self) -> Arc<Routing> {
        self.0.load_full()
    }

    /// New requests use `routing` from now on.
    pub fn replace(&self, routing: Routing) {
        self.0.store(Arc::new(routing));
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Sorted by prefix length, longest first.
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table with unchecked balancers (no health checks, no TLS):
    /// tests and benches. The proxy builds its routes in `server::build`.
    pub fn build(configs: &[RouteSettings]) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(configs.len());
        for (i, rc) in configs.iter().enumerate() {
            let group = UpstreamGroup::unchecked(&rc.upstreams)
                .map_err(|e| format!("routes[{i}].upstream: {e}"))?;
            let mut route = Route::new(rc, Arc::new(group));
            for (tenant, up) in &rc.tenant_upstreams {
                let group = UpstreamGroup::unchecked(&up.addrs)
                    .map_err(|e| format!("routes[{i}].tenant_upstreams.{tenant}: {e}"))?;
                route
                    .tenant_upstreams
                    .insert(tenant.as_str().into(), Arc::new(group));
            }
            routes.push(Arc::new(route));
        }
        Ok(Self::from_routes(routes))
    }

    pub fn from_routes(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The longest prefix that matches `path`.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
    }
}

/// Where an authenticated tenant's request on `route` goes: the route's
/// `tenant_upstreams` entry for the tenant, else the tenant's pool (when this
/// proxy knows it), else the route's upstream.
pub fn choose_upstream<'a>(
    route: &'a Route,
    pools: &'a HashMap<Box<str>, Arc<UpstreamGroup>>,
    tenant: Option<(&str, Option<&str>)>,
) -> &'a Arc<UpstreamGroup> {
    let Some((tenant, pool)) = tenant else {
        return &route.upstream;
    };
    route
        .tenant_upstreams
        .get(tenant)
        .or_else(|| pool.and_then(|p| pools.get(p)))
        .unwrap_or(&route.upstream)
}

/// The path as the proxy matches, authorises and forwards it: `//` merged,
/// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, other
/// escapes upper-cased. `Ok(None)`: the path is already normal (the common case,
/// no allocation). A `%` not followed by two hex digits is refused.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    const BAD_ESCAPE: &str = "malformed percent-encoding in the path";
    let b = path.as_bytes();
    let needs = b.windows(2).any(|w| w == b"//") || b.contains(&b'%');
    if !needs {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if out.last() == Some(&b'/') => i += 1,
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BAD_ESCAPE);
                };
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.push(b'%');
                    out.push(b[i + 1].to_ascii_uppercase());
                    out.push(b[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded, so the result is UTF-8 whenever the input was.
    let normal = String::from_utf8(out).map_err(|_| BAD_ESCAPE)?;
    Ok((normal != path).then_some(normal))
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Refuses paths an upstream might normalise into another route: `.`/`..` segments
/// (also percent-encoded), encoded `/` or `\\`, backslashes, NUL.
///
/// One pass over the bytes, no allocation: it runs on every request.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    const ENCODED: &str = "encoded slashes, backslashes and NUL are not allowed in the path";
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("the request path must start with /");
    }
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return Err(ENCODED),
            b'%' => {
                let hex = (
                    b.get(i + 1).map(u8::to_ascii_lowercase),
                    b.get(i + 2).map(u8::to_ascii_lowercase),
                );
                if matches!(
                    hex,
                    (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c')) | (Some(b'0'), Some(b'0'))
                ) {
                    return Err(ENCODED);
                }
            }
            _ => {}
        }
    }
    for seg in b.split(|&c| c == b'/') {
        let seg = seg.split(|&c| c == b';').next().unwrap_or_default();
        if is_dot_segment(seg) {
            return Err("dot segments are not allowed in the path");
        }
    }
    Ok(())
}

/// Whether a segment (parameters cut off) decodes to `.` or `..`: one or two
/// units, each `.` or `%2e` in either case.
fn is_dot_segment(mut seg: &[u8]) -> bool {
    let mut dots = 0;
    while !seg.is_empty() {
        seg = match seg {
            [b'.', rest @ ..] => rest,
            [b'%', b'2', e, rest @ ..] if e.eq_ignore_ascii_case(&b'e') => rest,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_before_matching() {
        let n = |p: &str| normalize_path(p).unwrap();
        assert_eq!(n("/api/v1/resources"), None);
        assert_eq!(
            n("//api/v1/resources").as_deref(),
            Some("/api/v1/resources")
        );
        assert_eq!(n("/api//v1///x").as_deref(), Some("/api/v1/x"));
        assert_eq!(n("/%61pi/v1/%7Euser").as_deref(), Some("/api/v1/~user"));
        assert_eq!(n("/a%2fb%3a").as_deref(), Some("/a%2Fb%3A"));
        assert_eq!(n("/%41%5A%30-%2D"), Some("/AZ0--".to_owned()));
        assert_eq!(n("/%2e%2e/admin").as_deref(), Some("/../admin"));
        assert_eq!(
            n("/caf%C3%A9"),
            None,
            "already normal: upper-case escapes stay"
        );
        assert_eq!(n("/caf%c3%a9").as_deref(), Some("/caf%C3%A9"));
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
        // Decoded dot segments and encoded slashes are then refused by check_path.
        assert!(check_path(&n("/%2e%2e/admin").unwrap()).is_err());
        assert!(check_path(&n("/a%2fb").unwrap()).is_err());
    }

    fn rc(prefix: &str, resource: Option<&str>, public: bool) -> RouteSettings {
        RouteSettings {
            prefix: prefix.into(),
            upstreams: vec!["127.0.0.1:9".into()],
            resource: resource.map(Into::into),
            public,
            audience: prefix.into(),
            bind_request: None,
            assertion: true,
            tls: false,
            ca_file: None,
            ..RouteSettings::default()
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::build(&[
            rc("/api/", None, false),
            rc("/api/v1/", None, false),
            rc("/api/v1/public/", None, true),
        ])
        .unwrap();
        assert_eq!(t.find("/api/v1/resources").unwrap().prefix, "/api/v1/");
        assert_eq!(
            t.find("/api/v1/public/x").unwrap().prefix,
            "/api/v1/public/"
        );
        assert_eq!(t.find("/api/v2").unwrap().prefix, "/api/");
        assert!(t.find("/other").is_none());
    }

    #[test]
    fn silo_tenants_get_their_upstream_then_their_pool() {
        use tenantgate_core::config::UpstreamSettings;
        let mut route = rc("/api/", None, false);
        route.tenant_upstreams.insert(
            "acme".into(),
            UpstreamSettings {
                addrs: vec!["127.0.0.1:7001".into()],
                ..UpstreamSettings::default()
            },
        );
        let t = RouteTable::build(&[route]).unwrap();
        let r = t.find("/api/x").unwrap();
        let pool = |a: &str| Arc::new(UpstreamGroup::unchecked(&[a.to_owned()]).unwrap());
        let pools: HashMap<Box<str>, Arc<UpstreamGroup>> = [("big".into(), pool("127.0.0.1:7002"))]
            .into_iter()
            .collect();
        let to = |tenant| choose_upstream(r, &pools, tenant).addrs[0].clone();
        assert_eq!(
            to(Some(("acme", Some("big")))),
            "127.0.0.1:7001",
            "the route's entry wins"
        );
        assert_eq!(to(Some(("globex", Some("big")))), "127.0.0.1:7002");
        assert_eq!(
            to(Some(("globex", Some("gone")))),
            "127.0.0.1:9",
            "unknown pool"
        );
        assert_eq!(to(Some(("globex", None))), "127.0.0.1:9");
        assert_eq!(to(None), "127.0.0.1:9", "public requests");
    }

    #[test]
    fn resource_from_first_segment_or_config() {
        let t = RouteTable::build(&[
            rc("/api/v1/", None, false),
            rc("/jobs", Some("jobs"), false),
        ])
        .unwrap();
        let r = t.find("/api/v1/resources/42").unwrap();
        assert_eq!(r.resource_for("/api/v1/resources/42"), "resources");
        assert_eq!(r.resource_for("/api/v1/resources"), "resources");
        assert_eq!(r.resource_for("/api/v1/"), "");
        let j = t.find("/jobs/1").unwrap();
        assert_eq!(j.resource_for("/jobs/1"), "jobs");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        assert!(check_path("/api/v1/resources/42").is_ok());
        assert!(check_path("/api/v1/a.b/..c").is_ok());
        for bad in [
            "/public/../api/v1/resources",
            "/public/%2e%2e/api",
            "/public/%2E./api",
            "/a/./b",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "relative",
            "/x/..;/y",
            "/x/%2e",
            "/x/.%2E;p=1",
            "/a%00b",
            "/a%2Fb",
            "/..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/", "/x/...", "/x/.%2e.", "/x/%2", "/x/%", "/x/.a", "/x/;..", "/%2e%2ex",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    /// The rule as first written (allocating, substring searches): the one-pass
    /// version must agree with it on every path.
    fn check_path_model(path: &str) -> Result<(), &'static str> {
        if !path.starts_with('/') {
            return Err("the request path must start with /");
        }
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f")
            || lower.contains("%5c")
            || lower.contains("%00")
            || path.contains('\\')
        {
            return Err("encoded slashes, backslashes and NUL are not allowed in the path");
        }
        for seg in path.split('/') {
            let seg = seg.split([';']).next().unwrap_or("");
            let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
            if decoded == "." || decoded == ".." {
                return Err("dot segments are not allowed in the path");
            }
        }
        Ok(())
    }

    #[test]
    fn one_pass_check_agrees_with_the_model_on_all_short_paths() {
        // Every path of up to 6 characters over the alphabet that matters.
        let alphabet = [
            '/', '.', '%', '2', 'e', 'E', 'f', '5', 'c', '0', ';', 'a', '\\',
        ];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::with_capacity(paths.len() * alphabet.len());
            for p in &paths {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            for p in &next {
                let path = format!("/{p}");
                assert_eq!(check_path(&path), check_path_model(&path), "{path:?}");
            }
            paths = next;
        }
    }
}
