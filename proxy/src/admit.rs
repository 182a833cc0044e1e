//! Stages 1–6 (route → scrub → authenticate → tenant → authorize → limit → quota)
//! as one function over a described request, run by the proxy for every request
//! ([`Mode::Enforce`]) and by `POST /explain` ([`Mode::Peek`]: nothing is spent,
//! counted or signed). An [`Observe`]r sees each stage's outcome: the hot path
//! passes [`Silent`] (the detail closures are never called), explain a [`Trace`].

use crate::assertion::{Assertions, Binding};
use crate::auth::{ip_allowed, presented, Authenticated, Authenticator, Presented};
use crate::control::domains::Domains;
use crate::control::{ControlPlane, TenantView};
use crate::forwarded::{Forwarded, Forwarding};
use crate::headers;
use crate::limiter::quota::Quotas;
use crate::limiter::{Decision, LimitError, Limiter, Limits};
use crate::reject::Reject;
use crate::route::{check_path, normalize_path, LiveRoutes, Route};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::domain::{Action, TenantStatus};

/// The stages an explanation reports, in the order the proxy runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Route,
    Scrub,
    Authenticate,
    Tenant,
    Authorize,
    Limit,
    Quota,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Route,
        Stage::Scrub,
        Stage::Authenticate,
        Stage::Tenant,
        Stage::Authorize,
        Stage::Limit,
        Stage::Quota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Route => "route",
            Stage::Scrub => "scrub",
            Stage::Authenticate => "authenticate",
            Stage::Tenant => "tenant",
            Stage::Authorize => "authorize",
            Stage::Limit => "limit",
            Stage::Quota => "quota",
        }
    }
}

/// Whether a stage's side effects happen: the proxy's own requests spend tokens,
/// count quota and sign assertions; explain only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Peek,
}

/// Sees the stages as they run. `detail` closures are only called by observers
/// that keep them.
pub trait Observe {
    /// The stage now running.
    fn enter(&mut self, stage: Stage);
    /// The running stage let the request through.
    fn pass(&mut self, detail: impl FnOnce() -> String);
    /// The running stage did not apply (e.g. no quota, a public route).
    fn skip(&mut self, detail: impl FnOnce() -> String);
    /// Why the running stage is about to refuse (before it returns the `Reject`).
    fn why(&mut self, detail: impl FnOnce() -> String);
}

/// The hot path's observer: nothing.
pub struct Silent;

impl Observe for Silent {
    #[inline(always)]
    fn enter(&mut self, _: Stage) {}
    #[inline(always)]
    fn pass(&mut self, _: impl FnOnce() -> String) {}
    #[inline(always)]
    fn skip(&mut self, _: impl FnOnce() -> String) {}
    #[inline(always)]
    fn why(&mut self, _: impl FnOnce() -> String) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Deny,
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Deny => "deny",
            Outcome::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub stage: Stage,
    pub outcome: Outcome,
    pub detail: String,
}

/// Explain's observer: one step per stage.
#[derive(Debug, Default)]
pub struct Trace {
    current: Option<Stage>,
    why: Option<String>,
    pub steps: Vec<Step>,
}

impl Trace {
    fn push(&mut self, outcome: Outcome, detail: String) {
        if let Some(stage) = self.current.take() {
            self.steps.push(Step {
                stage,
                outcome,
                detail,
            });
        }
    }

    /// Closes the trace: the stage that refused (if any) is a `deny`, every stage
    /// that did not run is a `skip`.
    pub fn finish(mut self, result: &Result<(), Reject>) -> Vec<Step> {
        if let Err(reject) = result {
            let detail = self
                .why
                .take()
                .unwrap_or_else(|| reject.message().to_owned());
            self.push(Outcome::Deny, detail);
        }
        let after = match result {
            Ok(()) => "not reached",
            Err(_) => "not reached: an earlier stage refused",
        };
        for stage in Stage::ALL {
            if !self.steps.iter().any(|s| s.stage == stage) {
                let detail = if result.is_ok() {
                    "not run for this request".to_owned()
                } else {
                    after.to_owned()
                };
                self.steps.push(Step {
                    stage,
                    outcome: Outcome::Skip,
                    detail,
                });
            }
        }
        self.steps
            .sort_by_key(|s| Stage::ALL.iter().position(|x| *x == s.stage));
        self.steps
    }
}

impl Observe for Trace {
    fn enter(&mut self, stage: Stage) {
        self.current = Some(stage);
        self.why = None;
    }
    fn pass(&mut self, detail: impl FnOnce() -> String) {
        self.push(Outcome::Pass, detail());
    }
    fn skip(&mut self, detail: impl FnOnce() -> String) {
        self.push(Outcome::Skip, detail());
    }
    fn why(&mut self, detail: impl FnOnce() -> String) {
        self.why = Some(detail());
    }
}

/// The request as the stages see it.
pub struct Described<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The TCP peer (`None`: not an IP socket, or explain without `client_ip`).
    pub peer: Option<IpAddr>,
    /// `http` or `https`.
    pub proto: &'static str,
    /// SHA-256 of a verified TLS client certificate.
    pub client_cert: Option<&'a [u8]>,
    pub request_id: &'a str,
    pub start: Instant,
    pub start_unix_ms: i64,
}

/// What the stages learned; the proxy keeps it in its per-request context.
#[derive(Default)]
pub struct Admission {
    pub route: Option<Arc<Route>>,
    /// The normalised path when it differs from the request's (forwarded instead).
    pub normal: Option<String>,
    /// Client-supplied identity headers to remove.
    pub scrubbed: Vec<HeaderName>,
    /// The forwarding headers and the client address (scrub stage).
    pub forwarded: Option<Forwarded>,
    pub who: Option<Authenticated>,
    /// Set once the tenant is known to exist: the request is metered for it.
    pub view: Option<Arc<TenantView>>,
    /// The limits in force and what they answered (the response's fields).
    pub limits: Option<Limits>,
    /// The signed tenant assertion to send upstream.
    pub assertion: Option<HeaderValue>,
}

/// Everything stages 1–6 read.
pub struct Pipeline {
    /// The routes and `[[upstream_pools]]` in force (replaced by SIGHUP).
    pub routes: Arc<LiveRoutes>,
    pub auth: Arc<Authenticator>,
    pub control: Arc<ControlPlane>,
    pub limiter: Limiter,
    pub quotas: Arc<Quotas>,
    pub forwarding: Forwarding,
    pub assertions: Arc<Assertions>,
    pub domains: Arc<Domains>,
    /// Largest accepted request header section (names + values), bytes.
    pub max_header_bytes: usize,
}

/// An API key as it may be shown: its public prefix only.
pub fn redacted_key(key: &str) -> String {
    let mut parts = key.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("tg"), Some(prefix), Some(_))
            if !prefix.is_empty()
                && prefix.len() <= 32
                && prefix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("tg_{prefix}_…")
        }
        _ => format!(
            "<{} characters, not tg_<prefix>_<secret>>",
            key.chars().count()
        ),
    }
}

fn decision_text(name: &str, d: &Decision) -> String {
    if d.allowed {
        format!(
            "{name}: {} of {} left per {} s after this request",
            d.remaining, d.limit, d.window_secs
        )
    } else {
        format!(
            "{name}: exhausted ({} per {} s); retry after {} s",
            d.limit, d.window_secs, d.retry_after_secs
        )
    }
}

impl Pipeline {
    /// Runs the stages for `req`. On `Ok` the request may be proxied; `adm`
    /// holds what the later phases need either way.
    pub async fn run<O: Observe>(
        &self,
        req: &Described<'_>,
        adm: &mut Admission,
        mode: Mode,
        obs: &mut O,
    ) -> Result<(), Reject> {
        obs.enter(Stage::Route);
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes {
            obs.why(|| {
                format!(
                    "the header section is {header_bytes} bytes, more than {}",
                    self.max_header_bytes
                )
            });
            return Err(Reject::HeadersTooLarge);
        }
        let normal = normalize_path(req.uri.path()).map_err(Reject::BadRequest)?;
        let path = normal.as_deref().unwrap_or(req.uri.path());
        check_path(path).map_err(Reject::BadRequest)?;
        let Some(route) = self.routes.find(path) else {
            obs.why(|| format!("no route prefix matches {path}"));
            return Err(Reject::NoRoute);
        };
        adm.route = Some(route.clone());
        let resource = route.resource_for(path);
        obs.pass(|| {
            format!(
                "{path} matches prefix {} ({}, resource {resource:?}){}",
                route.prefix,
                if route.public { "public" } else { "protected" },
                if normal.is_some() {
                    "; path normalised"
                } else {
                    ""
                }
            )
        });

        // Scrub: always, on every route, before anything else reads the headers
        // (none of the stages below reads an identity header).
        obs.enter(Stage::Scrub);
        adm.scrubbed = headers::identity_headers_in(req.headers);
        adm.forwarded = Some(self.forwarding.apply(req.peer, req.headers, req.proto));
        obs.pass(|| {
            let client = adm
                .forwarded
                .as_ref()
                .and_then(|f| f.client)
                .map_or("unknown".to_owned(), |ip| ip.to_string());
            if adm.scrubbed.is_empty() {
                format!("no client-supplied identity headers; client address {client}")
            } else {
                let names: Vec<&str> = adm.scrubbed.iter().map(HeaderName::as_str).collect();
                format!("removed {}; client address {client}", names.join(", "))
            }
        });
        if route.public {
            for stage in &Stage::ALL[2..] {
                obs.enter(*stage);
                obs.skip(|| "public route: no credential needed".to_owned());
            }
            adm.normal = normal;
            return Ok(());
        }

        obs.enter(Stage::Authenticate);
        // What the credential is, as it may be shown (explain only: never built on
        // the hot path, whose observer calls no detail closure).
        let shown = || match presented(req.headers) {
            Ok(Some(Presented::ApiKey(k))) => format!("API key {}", redacted_key(k)),
            Ok(Some(Presented::Jwt(_))) => "bearer JWT".to_owned(),
            Ok(None) if req.client_cert.is_some() => "TLS client certificate".to_owned(),
            Ok(None) => "no credential".to_owned(),
            Err(_) => "a credential that cannot be read".to_owned(),
        };
        let cred = match self.auth.credential(req.headers, req.client_cert)? {
            Some(c) => c,
            None => {
                obs.why(|| "no credential: neither Authorization: Bearer nor X-API-Key".into());
                return Err(Reject::NoCredential);
            }
        };
        let who = match self
            .auth
            .authenticate(cred, req.start, req.start_unix_ms)
            .await
        {
            Ok(who) => who,
            Err(e) => {
                obs.why(|| format!("{}: {}", shown(), e.message()));
                return Err(e);
            }
        };
        // Kept from here, so a refused request is still metered to its key.
        let who = &*adm.who.insert(who);
        let principal = who.principal();
        obs.pass(|| {
            let key = principal
                .api_key_id()
                .map(|k| format!(", key id {k}"))
                .unwrap_or_default();
            format!(
                "{} ({}) → tenant {:?}, user {:?}, role {:?}{key}",
                shown(),
                principal.method.as_str(),
                principal.tenant_id(),
                principal.user_id(),
                principal.role()
            )
        });

        obs.enter(Stage::Tenant);
        // A tenant's own domain admits only that tenant's credentials.
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let domain_ok = match mode {
            Mode::Enforce => self.domains.allows(host, principal.tenant_id()),
            Mode::Peek => self.domains.would_allow(host, principal.tenant_id()),
        };
        if !domain_ok {
            obs.why(|| {
                format!(
                    "host {:?} is another tenant's domain; the credential is tenant {:?}'s",
                    host.unwrap_or(""),
                    principal.tenant_id()
                )
            });
            return Err(Reject::Forbidden);
        }
        let view = self
            .control
            .tenant_view(principal.tenant_id(), principal.role(), req.start)
            .await
            .map_err(|_| Reject::Unavailable)?;
        let Some(view) = view else {
            obs.why(|| format!("tenant {:?} does not exist", principal.tenant_id()));
            return Err(Reject::UnknownTenant);
        };
        adm.view = Some(view.clone());
        if view.status != TenantStatus::Active {
            obs.why(|| {
                format!(
                    "tenant {:?} is {}",
                    principal.tenant_id(),
                    view.status.as_str()
                )
            });
            return Err(Reject::TenantSuspended);
        }
        obs.pass(|| format!("tenant {:?} exists and is active", principal.tenant_id()));

        obs.enter(Stage::Authorize);
        let rules = who.key_rules();
        let client = adm.forwarded.as_ref().and_then(|f| f.client);
        for (whose, allowed) in [
            ("tenant's", view.allowed.as_deref()),
            ("key's", rules.and_then(|r| r.allowed.as_deref())),
        ] {
            if let Some(allowed) = allowed {
                if !ip_allowed(allowed, client) {
                    obs.why(|| match client {
                        Some(ip) => format!("client address {ip} is not in the {whose} allow-list"),
                        None => format!("the {whose} allow-list needs a client address"),
                    });
                    return Err(Reject::IpNotAllowed);
                }
            }
        }
        let Some(action) = Action::from_method(req.method.as_str()) else {
            obs.why(|| format!("method {} maps to no action", req.method));
            return Err(Reject::Forbidden);
        };
        let role = principal.role();
        if !view
            .grants
            .as_ref()
            .is_some_and(|g| g.allows(action, resource))
        {
            obs.why(|| {
                if view.grants.is_none() {
                    format!("role {role:?} has no policy in this tenant")
                } else {
                    format!(
                        "role {role:?} may not {} {resource:?} ({} → {})",
                        action.as_str(),
                        req.method,
                        action.as_str()
                    )
                }
            });
            return Err(Reject::Forbidden);
        }
        if let Some(scopes) = rules.and_then(|r| r.scopes.as_ref()) {
            if !scopes.allows(action, resource) {
                obs.why(|| {
                    format!(
                        "the API key's scopes do not allow {} {resource:?}",
                        action.as_str()
                    )
                });
                return Err(Reject::Forbidden);
            }
        }
        obs.pass(|| {
            format!(
                "role {role:?} may {} {resource:?}{}",
                action.as_str(),
                if rules.is_some_and(|r| r.scopes.is_some()) {
                    " (and the key's scopes allow it)"
                } else {
                    ""
                }
            )
        });

        obs.enter(Stage::Limit);
        let unavailable = |LimitError::Unavailable| Reject::Unavailable;
        let tenant_id = view.tenant_id.as_str();
        let tenant = match mode {
            Mode::Enforce => self.limiter.check(tenant_id, &view.limit).await,
            Mode::Peek => self.limiter.peek(tenant_id, &view.limit).await,
        }
        .map_err(unavailable)?;
        let mut limits = Limits::tenant(tenant);
        // The key's bucket is spent only when the tenant's admitted the request.
        if let Some((bucket, limit)) =
            rules.and_then(|r| r.rate_limit.as_ref().map(|l| (&r.bucket, l)))
        {
            if limits.tenant.allowed {
                limits.key = Some(
                    match mode {
                        Mode::Enforce => self.limiter.check(bucket, limit).await,
                        Mode::Peek => self.limiter.peek(bucket, limit).await,
                    }
                    .map_err(unavailable)?,
                );
            }
        }
        let rate_ok = limits.tenant.allowed && limits.key.is_none_or(|d| d.allowed);
        if rate_ok {
            obs.pass(|| {
                let mut s = decision_text("tenant bucket", &limits.tenant);
                if let Some(k) = &limits.key {
                    s.push_str("; ");
                    s.push_str(&decision_text("key bucket", k));
                }
                s
            });
        } else {
            obs.why(|| {
                let mut s = decision_text("tenant bucket", &limits.tenant);
                if let Some(k) = &limits.key {
                    s.push_str("; ");
                    s.push_str(&decision_text("key bucket", k));
                }
                s
            });
        }

        // The quota counts only requests the rate limits admitted.
        if rate_ok {
            obs.enter(Stage::Quota);
            match view.quota.as_ref() {
                Some(quota) => {
                    let d = match mode {
                        Mode::Enforce => {
                            self.quotas.check(tenant_id, quota, req.start_unix_ms).await
                        }
                        Mode::Peek => self.quotas.peek(tenant_id, quota, req.start_unix_ms).await,
                    }
                    .map_err(unavailable)?;
                    limits.quota = Some(d);
                    let text = || {
                        format!(
                            "{} quota: {} of {} left; resets in {} s",
                            quota.period.as_str(),
                            d.remaining,
                            d.limit,
                            d.reset_secs
                        )
                    };
                    if d.allowed {
                        obs.pass(text);
                    } else {
                        obs.why(text);
                    }
                }
                None => obs.skip(|| "the tenant has no quota".to_owned()),
            }
        }
        adm.limits = Some(limits);
        if !rate_ok {
            return Err(Reject::RateLimited(Box::new(limits)));
        }
        if limits.quota.is_some_and(|d| !d.allowed) {
            return Err(Reject::QuotaExceeded(Box::new(limits)));
        }
        if mode == Mode::Enforce && self.assertions.enabled() && route.assertion {
            // The forwarded target: the normalised path with the request's query.
            let target: Cow<'_, str> = match (&normal, req.uri.path_and_query()) {
                (Some(n), pq) => match pq.and_then(|pq| pq.query()) {
                    Some(q) => Cow::Owned(format!("{n}?{q}")),
                    None => Cow::Borrowed(n.as_str()),
                },
                (None, Some(pq)) => Cow::Borrowed(pq.as_str()),
                (None, None) => Cow::Borrowed("/"),
            };
            let binding = self.assertions.binds(&route).then(|| Binding {
                request_id: req.request_id,
                method: req.method.as_str(),
                path_and_query: &target,
            });
            adm.assertion = self
                .assertions
                .header(
                    &route,
                    principal,
                    req.start_unix_ms.div_euclid(1000),
                    binding,
                )
                .map_err(|_| Reject::Unavailable)?;
        }
        adm.normal = normal;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_has_every_stage_in_order() {
        let mut t = Trace::default();
        t.enter(Stage::Route);
        t.pass(|| "matched".into());
        t.enter(Stage::Scrub);
        t.pass(|| "nothing".into());
        t.enter(Stage::Authenticate);
        t.why(|| "no credential".into());
        let steps = t.finish(&Err(Reject::NoCredential));
        let got: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.stage.as_str(), s.outcome.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("route", "pass"),
                ("scrub", "pass"),
                ("authenticate", "deny"),
                ("tenant", "skip"),
                ("authorize", "skip"),
                ("limit", "skip"),
                ("quota", "skip"),
            ]
        );
        assert_eq!(steps[2].detail, "no credential");
    }

    #[test]
    fn a_refusal_without_a_reason_uses_the_reject_message() {
        let mut t = Trace::default();
        t.enter(Stage::Route);
        let steps = t.finish(&Err(Reject::NoRoute));
        assert_eq!(steps[0].outcome, Outcome::Deny);
        assert_eq!(steps[0].detail, Reject::NoRoute.message());
    }

    #[test]
    fn silent_never_builds_a_detail() {
        let mut s = Silent;
        s.enter(Stage::Limit);
        s.pass(|| unreachable!("the hot path builds no text"));
        s.why(|| unreachable!("the hot path builds no text"));
    }

    #[test]
    fn keys_are_redacted_to_their_prefix() {
        assert_eq!(redacted_key("tg_abc123_secretsecret"), "tg_abc123_…");
        assert!(!redacted_key("tg_abc_").contains("secret"));
        assert!(!redacted_key("plain-secret-value").contains("secret-value"));
    }
}
