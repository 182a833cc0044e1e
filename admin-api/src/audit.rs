//! The audit log, recorded generically: every successful mutating request
//! (POST/PUT/PATCH/DELETE under `/v1`, except login and read-only evaluations) is
//! one entry with the caller, the tenant, an action derived from the route
//! template (`api_key.rotate`, `tenant.update`, …), the path as its target and the
//! request id. Bodies are never recorded, so no secret ever is.
//!
//! The caller is learnt from the [`Caller`] extractor through an [`AuditSlot`]
//! the middleware puts in the request's extensions; a handler that creates a
//! tenant names it with an [`AuditTenant`] response extension.

use crate::auth::Caller;
use crate::AdminState;
use http::Method;
use std::sync::{Arc, Mutex};
use tenantgate_core::store::NewAuditEntry;

/// Filled by the `Caller` extractor with who is calling.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<Caller>>>);

impl AuditSlot {
    pub fn set(&self, caller: &Caller) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(caller.clone()),
            Err(p) => *p.into_inner() = Some(caller.clone()),
        }
    }

    fn get(&self) -> Option<Caller> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Response extension: the tenant a request changed when its path does not name
/// it (creating a tenant).
#[derive(Debug, Clone)]
pub struct AuditTenant(pub String);

/// Routes that mutate nothing (or are no admin change) though not GET.
const NOT_CHANGES: &[&str] = &["/v1/auth/login", "/v1/explain"];

/// Whether a request with this method and route template is an admin change.
pub fn is_change(method: &Method, route: &str) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && route.starts_with("/v1/")
        && !NOT_CHANGES.contains(&route)
}

/// `api-keys` → `api_key`, `policies` → `policy`, `rate-limit` → `rate_limit`.
fn singular(segment: &str) -> String {
    let s = segment.replace('-', "_");
    if let Some(stem) = s.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = s.strip_suffix('s') {
        stem.to_owned()
    } else {
        s
    }
}

/// Final path segments that are verbs on the resource before them.
const VERBS: &[&str] = &["rotate", "revoke", "suspend", "resume", "verify", "reset"];

/// The action of a change: `<resource>.<verb>`. The resource is the last literal
/// segment; a verb segment at the end acts on the resource before it
/// (`…/api-keys/{key_id}/rotate` → `api_key.rotate`); otherwise the verb comes
/// from the method (POST create, PUT set, PATCH update, DELETE delete).
pub fn action(method: &Method, route: &str) -> String {
    let is_param = |s: &&str| s.starts_with('{');
    let mut literals = route
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty() && !is_param(s))
        .rev();
    let last = literals.next().unwrap_or("unknown");
    if VERBS.contains(&last) {
        let resource = literals
            .next()
            .map(singular)
            .unwrap_or_else(|| "unknown".into());
        return format!("{resource}.{last}");
    }
    let resource = singular(last);
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "set",
        Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "change",
    };
    format!("{resource}.{verb}")
}

/// The tenant id of a concrete `/v1/tenants/{id}/…` path.
fn tenant_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let id = rest.split('/').next().filter(|s| !s.is_empty())?;
    Some(id.to_owned())
}

/// Records one successful change (failures to record are logged: the change
/// itself is done).
pub async fn record(
    state: &AdminState,
    slot: &AuditSlot,
    method: &Method,
    route: &str,
    path: &str,
    created_tenant: Option<String>,
    request_id: &str,
) {
    let Some(caller) = slot.get() else {
        // No credential was checked, so nobody to attribute it to (none of the
        // mutating routes allows that).
        return;
    };
    let (actor_kind, actor_id) = match &caller {
        Caller::Platform => ("platform", "platform".to_owned()),
        Caller::TenantAdmin { user_id, .. } => ("user", user_id.clone()),
    };
    let entry = NewAuditEntry {
        actor_kind: actor_kind.to_owned(),
        actor_id,
        tenant_id: created_tenant.or_else(|| tenant_of(path)),
        action: action(method, route),
        target: path.to_owned(),
        request_id: request_id.to_owned(),
    };
    if let Err(e) = state.store().record_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, target = %entry.target, "cannot record the audit entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_from_route_templates() {
        let cases = [
            (Method::POST, "/v1/tenants", "tenant.create"),
            (Method::PATCH, "/v1/tenants/{id}", "tenant.update"),
            (Method::DELETE, "/v1/tenants/{id}", "tenant.delete"),
            (Method::POST, "/v1/tenants/{id}/api-keys", "api_key.create"),
            (
                Method::DELETE,
                "/v1/tenants/{id}/api-keys/{key_id}",
                "api_key.delete",
            ),
            (
                Method::POST,
                "/v1/tenants/{id}/api-keys/{key_id}/rotate",
                "api_key.rotate",
            ),
            (
                Method::PUT,
                "/v1/tenants/{id}/api-keys/{key_id}/rate-limit",
                "rate_limit.set",
            ),
            (
                Method::PUT,
                "/v1/tenants/{id}/policies/{role}",
                "policy.set",
            ),
            (Method::PUT, "/v1/tenants/{id}/rate-limit", "rate_limit.set"),
            (Method::PUT, "/v1/tenants/{id}/quota", "quota.set"),
            (Method::PUT, "/v1/plans/{name}", "plan.set"),
            (Method::POST, "/v1/tenants/{id}/issuers", "issuer.create"),
            (
                Method::POST,
                "/v1/tenants/{id}/client-certs",
                "client_cert.create",
            ),
            (
                Method::PATCH,
                "/v1/tenants/{id}/users/{user_id}",
                "user.update",
            ),
            (
                Method::POST,
                "/v1/assertion-keys/rotate",
                "assertion_key.rotate",
            ),
        ];
        for (m, route, want) in cases {
            assert_eq!(action(&m, route), want, "{m} {route}");
        }
    }

    #[test]
    fn changes_and_tenants() {
        assert!(is_change(&Method::POST, "/v1/tenants"));
        assert!(!is_change(&Method::GET, "/v1/tenants"));
        assert!(!is_change(&Method::POST, "/v1/auth/login"));
        assert!(!is_change(&Method::POST, "/v1/explain"));
        assert!(!is_change(&Method::POST, "unmatched"));
        assert_eq!(
            tenant_of("/v1/tenants/acme/api-keys/k"),
            Some("acme".into())
        );
        assert_eq!(tenant_of("/v1/tenants"), None);
        assert_eq!(tenant_of("/v1/plans/pro"), None);
    }
}
