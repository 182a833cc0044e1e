//! `tenantgate apply -f FILE [--dry-run] [--prune]`: makes the store match a
//! declarative file (YAML or TOML) of plans and tenants, through the admin API.
//!
//! 1. The whole file is read and checked — by the admin API's own request types
//!    and validators — before anything is asked of the API; every bad entry is
//!    reported (`FILE: tenants[2] (id "beta"): rate_limit.max_requests: …`), exit 2.
//! 2. The current state is read and the changes computed; references the file
//!    cannot satisfy (a tier that is no plan, a key's role without a policy) are
//!    reported the same way, still before any change.
//! 3. The changes are printed (`--dry-run` stops here) and made in order: plans,
//!    tenants (each with its policies, limits, issuers, domains, keys), then with
//!    `--prune` the tenants and non-built-in plans the file does not name.
//!
//! A tenant's `rate_limit` / `quota` absent means "follow the plan" (a tenant's own
//! limit is removed). Its `policies` are upserted (roles not listed are kept).
//! `issuers`, `domains` and `api_keys`, when present, are matched exactly (extra
//! ones are deleted / revoked); when absent they are left alone. Keys are matched
//! by name; a new key's secret is printed once.

use super::resources::Method;
use super::{connection, connection_args, runtime};
use crate::Fatal;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tenantgate_admin::routes::issuers::CreateIssuerRequest;
use tenantgate_admin::routes::policies::{validate_permissions, PermissionBody};
use tenantgate_admin::routes::quota::{validate_quota, QuotaBody};
use tenantgate_admin::routes::rate_limit::{validate_at, RateLimitBody};
use tenantgate_admin::ApiError;
use tenantgate_core::domain::{
    normalize_hostname, valid_name_token, valid_tenant_id, BUILT_IN_PLANS,
};

/// Roles every tenant has from onboarding.
const DEFAULT_ROLES: [&str; 3] = ["admin", "developer", "read_only"];

pub fn command() -> Command {
    connection_args(
        Command::new("apply")
            .about("Make the store match a YAML or TOML file of plans and tenants")
            .long_about(
                "Reads FILE (YAML, or TOML for a .toml name): {plans?: [{name, rate_limit, \
                 quota?}], tenants: [{id, name, tier, status?, policies?, rate_limit?, quota?, \
                 issuers?, domains?, api_keys?: [{name, role, scopes?}]}]}, checks all of it, \
                 then creates, updates (and with --prune deletes) through the admin API until \
                 the store matches. A second apply of the same file reports \"no changes\".",
            )
            .arg(
                Arg::new("file")
                    .short('f')
                    .long("file")
                    .value_name("FILE")
                    .required(true)
                    .help("The declarative file (YAML or TOML)"),
            )
            .arg(
                Arg::new("dry_run")
                    .long("dry-run")
                    .action(ArgAction::SetTrue)
                    .help("Print the changes without making them"),
            )
            .arg(
                Arg::new("prune")
                    .long("prune")
                    .action(ArgAction::SetTrue)
                    .help("Also delete tenants and non-built-in plans the file does not name"),
            ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    plans: Vec<Value>,
    #[serde(default)]
    tenants: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSpec {
    name: String,
    rate_limit: RateLimitBody,
    #[serde(default)]
    quota: Option<QuotaBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    role: String,
    permissions: Vec<PermissionBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    name: String,
    role: String,
    #[serde(default)]
    scopes: Option<Vec<PermissionBody>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSpec {
    id: String,
    name: String,
    tier: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    policies: Option<Vec<PolicySpec>>,
    #[serde(default)]
    rate_limit: Option<RateLimitBody>,
    #[serde(default)]
    quota: Option<QuotaBody>,
    /// Kept as JSON (sent as is); checked as the API's `CreateIssuerRequest`.
    #[serde(default)]
    issuers: Option<Vec<Value>>,
    #[serde(default)]
    domains: Option<Vec<String>>,
    #[serde(default)]
    api_keys: Option<Vec<KeySpec>>,
}

/// The file, checked.
struct Desired {
    plans: Vec<PlanSpec>,
    tenants: Vec<TenantSpec>,
}

/// Where an error is: `tenants[2] (id "beta")`.
fn entry(kind: &str, i: usize, key: &str, v: &Value) -> String {
    match v.get(key).and_then(Value::as_str) {
        Some(name) => format!("{kind}[{i}] ({key} {name:?})"),
        None => format!("{kind}[{i}]"),
    }
}

fn api_msg(e: ApiError) -> String {
    match e {
        ApiError::Validation { field, message } => format!("{field}: {message}"),
        other => other.to_string(),
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Reads FILE as YAML, or TOML when its name ends in `.toml`.
fn read_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let is_toml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        let v: toml::Value = toml::from_str(&text).map_err(|e| format!("not TOML: {e}"))?;
        serde_json::to_value(v).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str::<Value>(&text).map_err(|e| format!("not YAML: {e}"))
    }
}

/// Checks every entry (all errors, not just the first).
fn check(raw: Value) -> Result<Desired, Vec<String>> {
    let spec: FileSpec = match typed(&raw) {
        Ok(s) => s,
        Err(e) => return Err(vec![e]),
    };
    let mut errors = Vec::new();
    let mut plans = Vec::new();
    let mut plan_names = BTreeSet::new();
    for (i, v) in spec.plans.iter().enumerate() {
        let at = entry("plans", i, "name", v);
        let p: PlanSpec = match typed(v) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        if !valid_name_token(&p.name) {
            errors.push(format!(
                "{at}: name: must be a plan name ([a-z0-9_-], at most 64 characters)"
            ));
        }
        if !plan_names.insert(p.name.clone()) {
            errors.push(format!("{at}: name: {:?} is declared twice", p.name));
        }
        if let Err(e) = validate_at("rate_limit.", &p.rate_limit) {
            errors.push(format!("{at}: {}", api_msg(e)));
        }
        if let Some(q) = &p.quota {
            if let Err(e) = validate_quota("quota.", q) {
                errors.push(format!("{at}: {}", api_msg(e)));
            }
        }
        plans.push(p);
    }
    let mut tenants = Vec::new();
    let mut ids = BTreeSet::new();
    let mut all_domains = BTreeSet::new();
    let mut all_issuers = BTreeSet::new();
    for (i, v) in spec.tenants.iter().enumerate() {
        let at = entry("tenants", i, "id", v);
        let t: TenantSpec = match typed(v) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        let mut bad = |e: String| errors.push(format!("{at}: {e}"));
        if !valid_tenant_id(&t.id) {
            bad("id: must match [a-z0-9][a-z0-9-]{1,62}".into());
        }
        if !ids.insert(t.id.clone()) {
            bad(format!("id: {:?} is declared twice", t.id));
        }
        if let Err(e) = tenantgate_admin::routes::display_name("name", &t.name) {
            bad(api_msg(e));
        }
        if !valid_name_token(&t.tier) {
            bad("tier: must be a plan name".into());
        }
        if let Some(s) = &t.status {
            if s != "active" && s != "suspended" {
                bad("status: must be active or suspended".into());
            }
        }
        if let Some(rl) = &t.rate_limit {
            if let Err(e) = validate_at("rate_limit.", rl) {
                bad(api_msg(e));
            }
        }
        if let Some(q) = &t.quota {
            if let Err(e) = validate_quota("quota.", q) {
                bad(api_msg(e));
            }
        }
        let mut roles: BTreeSet<&str> = DEFAULT_ROLES.into_iter().collect();
        for (j, p) in t.policies.iter().flatten().enumerate() {
            if !valid_name_token(&p.role) {
                bad(format!(
                    "policies[{j}].role: must be a role name ([a-z0-9_-], at most 64 characters)"
                ));
            }
            roles.insert(&p.role);
            if let Err(e) =
                validate_permissions(&format!("policies[{j}].permissions"), p.permissions.clone())
            {
                bad(api_msg(e));
            }
        }
        for (j, iv) in t.issuers.iter().flatten().enumerate() {
            match typed::<CreateIssuerRequest>(iv) {
                Ok(req) => {
                    if let Err(m) = tenantgate_core::issuers::check_http_url(&req.issuer) {
                        bad(format!("issuers[{j}].issuer: {m}"));
                    }
                    if let Err(m) = tenantgate_core::issuers::check_http_url(&req.jwks_url) {
                        bad(format!("issuers[{j}].jwks_url: {m}"));
                    }
                    if req.audiences.is_empty() {
                        bad(format!(
                            "issuers[{j}].audiences: must list at least one audience"
                        ));
                    }
                    if !all_issuers.insert(req.issuer.clone()) {
                        bad(format!(
                            "issuers[{j}].issuer: {:?} is declared twice",
                            req.issuer
                        ));
                    }
                }
                Err(e) => bad(format!("issuers[{j}]: {e}")),
            }
        }
        for (j, d) in t.domains.iter().flatten().enumerate() {
            match normalize_hostname(d) {
                Ok(n) => {
                    if !all_domains.insert(n.clone()) {
                        bad(format!("domains[{j}]: {n:?} is declared twice"));
                    }
                }
                Err(m) => bad(format!("domains[{j}]: {m}")),
            }
        }
        let mut key_names = BTreeSet::new();
        for (j, k) in t.api_keys.iter().flatten().enumerate() {
            if let Err(e) = tenantgate_admin::routes::display_name("name", &k.name) {
                bad(format!("api_keys[{j}].{}", api_msg(e)));
            }
            if !key_names.insert(k.name.trim().to_owned()) {
                bad(format!(
                    "api_keys[{j}].name: {:?} is declared twice",
                    k.name
                ));
            }
            if !valid_name_token(&k.role) {
                bad(format!("api_keys[{j}].role: must be a role name"));
            }
            if let Some(scopes) = &k.scopes {
                if let Err(e) =
                    validate_permissions(&format!("api_keys[{j}].scopes"), scopes.clone())
                {
                    bad(api_msg(e));
                }
            }
        }
        tenants.push(t);
    }
    if errors.is_empty() {
        Ok(Desired { plans, tenants })
    } else {
        Err(errors)
    }
}

/// One change: what it does (printed) and the request that makes it.
struct Change {
    what: String,
    method: Method,
    path: String,
    body: Option<Value>,
    /// Print the new key's secret from the answer.
    shows_key: bool,
}

fn change(what: String, method: Method, path: String, body: Option<Value>) -> Change {
    Change {
        what,
        method,
        path,
        body,
        shows_key: false,
    }
}

fn rate_limit_json(b: &RateLimitBody) -> Value {
    let mut v = json!({"max_requests": b.max_requests, "window_seconds": b.window_seconds});
    if let (Some(burst), Some(o)) = (b.burst, v.as_object_mut()) {
        o.insert("burst".into(), json!(burst));
    }
    v
}

fn quota_json(q: &QuotaBody) -> Value {
    json!({"period": q.period.as_str(), "max_requests": q.max_requests})
}

fn perms_json(list: &[PermissionBody]) -> Value {
    Value::Array(
        list.iter()
            .map(|p| json!({"action": p.action, "resource": p.resource}))
            .collect(),
    )
}

/// Permissions as a comparable set.
fn perm_set(v: &Value) -> BTreeSet<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["action"].as_str().unwrap_or_default().to_owned(),
                p["resource"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn same_limit(current: &Value, want: &RateLimitBody) -> bool {
    current["max_requests"].as_u64() == Some(want.max_requests)
        && current["window_seconds"].as_u64() == Some(want.window_seconds)
        && current["burst"].as_u64() == want.burst
}

fn same_quota(current: &Value, want: &QuotaBody) -> bool {
    current["period"].as_str() == Some(want.period.as_str())
        && current["max_requests"].as_u64() == Some(want.max_requests)
}

/// The fields of a bound issuer that a declaration decides, normalised as the
/// API stores them (defaults filled in).
fn issuer_shape(v: &Value) -> Value {
    let list = |k: &str, default: &[&str]| -> Value {
        match v.get(k).and_then(Value::as_array) {
            Some(a) => {
                let mut s: Vec<String> = a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                s.sort();
                s.dedup();
                json!(s)
            }
            None => json!(default),
        }
    };
    json!({
        "jwks_url": v["jwks_url"],
        "audiences": list("audiences", &[]),
        "algorithms": list("algorithms", &["RS256"]),
        "tenant_claim": v.get("tenant_claim").filter(|x| !x.is_null()).cloned().unwrap_or(json!("tenant_id")),
        "role_claim": v.get("role_claim").filter(|x| !x.is_null()).cloned().unwrap_or(json!("role")),
        "default_role": v.get("default_role").cloned().unwrap_or(Value::Null),
        "max_lifetime_seconds": v.get("max_lifetime_seconds").cloned().unwrap_or(Value::Null),
    })
}

struct Planner<'a> {
    client: &'a super::client::Client,
    changes: Vec<Change>,
    /// References the store cannot satisfy (reported like file errors).
    errors: Vec<String>,
}

impl Planner<'_> {
    async fn get(&self, path: &str) -> Result<Value, Fatal> {
        self.client.send(Method::Get, path, &[], None).await
    }

    /// GET that may be 404 (`None`).
    async fn get_opt(&self, path: &str) -> Result<Option<Value>, Fatal> {
        match self.client.send(Method::Get, path, &[], None).await {
            Ok(v) => Ok(Some(v)),
            Err(f) if f.message.contains("(HTTP 404)") => Ok(None),
            Err(f) => Err(f),
        }
    }

    async fn plans(&mut self, want: &[PlanSpec], prune: bool) -> Result<Vec<Change>, Fatal> {
        let current = self.get("/v1/plans").await?;
        let by_name: BTreeMap<String, Value> = current
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p.clone())))
            .collect();
        for p in want {
            let body = json!({
                "rate_limit": rate_limit_json(&p.rate_limit),
                "quota": p.quota.as_ref().map(quota_json),
            });
            let what = match by_name.get(&p.name) {
                None => format!("create plan {}", p.name),
                Some(cur) => {
                    let quota_same = match (&p.quota, cur.get("quota").filter(|q| !q.is_null())) {
                        (None, None) => true,
                        (Some(w), Some(c)) => same_quota(c, w),
                        _ => false,
                    };
                    if same_limit(&cur["rate_limit"], &p.rate_limit) && quota_same {
                        continue;
                    }
                    format!("update plan {}", p.name)
                }
            };
            self.changes.push(change(
                what,
                Method::Put,
                format!("/v1/plans/{}", p.name),
                Some(body),
            ));
        }
        let mut later = Vec::new();
        if prune {
            let declared: BTreeSet<&str> = want.iter().map(|p| p.name.as_str()).collect();
            for name in by_name.keys() {
                if !declared.contains(name.as_str()) && !BUILT_IN_PLANS.contains(&name.as_str()) {
                    later.push(change(
                        format!("delete plan {name}"),
                        Method::Delete,
                        format!("/v1/plans/{name}"),
                        None,
                    ));
                }
            }
        }
        // Tiers must name a plan that exists once the plans are applied.
        Ok(later)
    }

    async fn tenant(
        &mut self,
        t: &TenantSpec,
        at: &str,
        exists: Option<&Value>,
    ) -> Result<(), Fatal> {
        let base = format!("/v1/tenants/{}", t.id);
        match exists {
            None => {
                self.changes.push(change(
                    format!("create tenant {} ({}, tier {})", t.id, t.name, t.tier),
                    Method::Post,
                    "/v1/tenants".into(),
                    Some(json!({"id": t.id, "name": t.name, "tier": t.tier})),
                ));
                if t.status.as_deref() == Some("suspended") {
                    self.changes.push(change(
                        format!("suspend tenant {}", t.id),
                        Method::Patch,
                        base.clone(),
                        Some(json!({"status": "suspended"})),
                    ));
                }
            }
            Some(cur) => {
                let mut patch = serde_json::Map::new();
                let mut what = Vec::new();
                if cur["name"].as_str() != Some(t.name.trim()) {
                    patch.insert("name".into(), json!(t.name));
                    what.push(format!("name {:?}", t.name));
                }
                if cur["tier"].as_str() != Some(t.tier.as_str()) {
                    patch.insert("tier".into(), json!(t.tier));
                    what.push(format!("tier {}", t.tier));
                }
                let status = t.status.as_deref().unwrap_or("active");
                if cur["status"].as_str() != Some(status) {
                    patch.insert("status".into(), json!(status));
                    what.push(format!("status {status}"));
                }
                if !patch.is_empty() {
                    self.changes.push(change(
                        format!("update tenant {}: {}", t.id, what.join(", ")),
                        Method::Patch,
                        base.clone(),
                        Some(Value::Object(patch)),
                    ));
                }
            }
        }
        let new = exists.is_none();

        // Policies: upserted.
        let mut roles: BTreeSet<String> = DEFAULT_ROLES.iter().map(|r| (*r).to_owned()).collect();
        if !new {
            let current = self.get(&format!("{base}/policies")).await?;
            for p in current.as_array().into_iter().flatten() {
                if let Some(r) = p["role"].as_str() {
                    roles.insert(r.to_owned());
                }
            }
        }
        for p in t.policies.iter().flatten() {
            roles.insert(p.role.clone());
            let want = perms_json(&p.permissions);
            if !new {
                if let Some(cur) = self.get_opt(&format!("{base}/policies/{}", p.role)).await? {
                    if perm_set(&cur["permissions"]) == perm_set(&want) {
                        continue;
                    }
                }
            }
            self.changes.push(change(
                format!("set policy {}/{}", t.id, p.role),
                Method::Put,
                format!("{base}/policies/{}", p.role),
                Some(json!({"permissions": want})),
            ));
        }

        // Rate limit and quota: declared = the tenant's own; absent = the plan's.
        let cur_limit = if new {
            None
        } else {
            Some(self.get(&format!("{base}/rate-limit")).await?)
        };
        let own_limit = cur_limit.as_ref().filter(|c| c["source"] == "tenant");
        match (&t.rate_limit, own_limit) {
            (Some(w), Some(c)) if same_limit(c, w) => {}
            (Some(w), _) => self.changes.push(change(
                format!("set rate limit of {}", t.id),
                Method::Put,
                format!("{base}/rate-limit"),
                Some(rate_limit_json(w)),
            )),
            (None, Some(_)) => self.changes.push(change(
                format!("rate limit of {} back to its plan's", t.id),
                Method::Delete,
                format!("{base}/rate-limit"),
                None,
            )),
            (None, None) => {}
        }
        let cur_quota = if new {
            None
        } else {
            self.get_opt(&format!("{base}/quota")).await?
        };
        let own_quota = cur_quota.as_ref().filter(|c| c["source"] == "tenant");
        match (&t.quota, own_quota) {
            (Some(w), Some(c)) if same_quota(c, w) => {}
            (Some(w), _) => self.changes.push(change(
                format!("set quota of {}", t.id),
                Method::Put,
                format!("{base}/quota"),
                Some(quota_json(w)),
            )),
            (None, Some(_)) => self.changes.push(change(
                format!("quota of {} back to its plan's", t.id),
                Method::Delete,
                format!("{base}/quota"),
                None,
            )),
            (None, None) => {}
        }

        // Issuers: matched by URL; a changed one is replaced.
        if let Some(want) = &t.issuers {
            let current = if new {
                json!([])
            } else {
                self.get(&format!("{base}/issuers")).await?
            };
            let mut by_url: BTreeMap<String, Value> = current
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| Some((i["issuer"].as_str()?.to_owned(), i.clone())))
                .collect();
            for w in want {
                let url = w["issuer"].as_str().unwrap_or_default().to_owned();
                if let Some(cur) = by_url.remove(&url) {
                    if issuer_shape(&cur) == issuer_shape(w) {
                        continue;
                    }
                    self.changes.push(change(
                        format!("replace issuer {url} of {} (delete)", t.id),
                        Method::Delete,
                        format!("{base}/issuers/{}", cur["id"].as_str().unwrap_or_default()),
                        None,
                    ));
                }
                self.changes.push(change(
                    format!("bind issuer {url} to {}", t.id),
                    Method::Post,
                    format!("{base}/issuers"),
                    Some(w.clone()),
                ));
            }
            for (url, cur) in by_url {
                self.changes.push(change(
                    format!("unbind issuer {url} from {}", t.id),
                    Method::Delete,
                    format!("{base}/issuers/{}", cur["id"].as_str().unwrap_or_default()),
                    None,
                ));
            }
        }

        // Domains: exact.
        if let Some(want) = &t.domains {
            let current = if new {
                json!([])
            } else {
                self.get(&format!("{base}/domains")).await?
            };
            let mut have: BTreeSet<String> = current
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["domain"].as_str().map(str::to_owned))
                .collect();
            for d in want {
                let d = normalize_hostname(d).unwrap_or_else(|_| d.clone());
                if !have.remove(&d) {
                    self.changes.push(change(
                        format!("add domain {d} to {}", t.id),
                        Method::Post,
                        format!("{base}/domains"),
                        Some(json!({"domain": d})),
                    ));
                }
            }
            for d in have {
                self.changes.push(change(
                    format!("remove domain {d} from {}", t.id),
                    Method::Delete,
                    format!("{base}/domains/{d}"),
                    None,
                ));
            }
        }

        // API keys: matched by name among the active ones.
        if let Some(want) = &t.api_keys {
            let current = if new {
                json!([])
            } else {
                self.get(&format!("{base}/api-keys")).await?
            };
            let mut active: Vec<Value> = current
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| k["status"] == "active")
                .cloned()
                .collect();
            for (j, k) in want.iter().enumerate() {
                if !roles.contains(&k.role) {
                    self.errors.push(format!(
                        "{at}: api_keys[{j}].role: the tenant has no policy for role {:?}",
                        k.role
                    ));
                    continue;
                }
                let name = k.name.trim();
                let found = active.iter().position(|c| c["name"].as_str() == Some(name));
                let scopes_json = k.scopes.as_deref().map(perms_json);
                if let Some(pos) = found {
                    let cur = active.remove(pos);
                    let id = cur["id"].as_str().unwrap_or_default().to_owned();
                    if cur["role"].as_str() == Some(k.role.as_str()) {
                        let cur_scopes = cur.get("scopes").filter(|s| !s.is_null());
                        let same = match (&scopes_json, cur_scopes) {
                            (None, None) => true,
                            (Some(w), Some(c)) => perm_set(w) == perm_set(c),
                            _ => false,
                        };
                        if !same {
                            self.changes.push(change(
                                format!("set scopes of key {name:?} of {}", t.id),
                                Method::Patch,
                                format!("{base}/api-keys/{id}"),
                                Some(json!({"scopes": scopes_json})),
                            ));
                        }
                        continue;
                    }
                    self.changes.push(change(
                        format!("revoke key {name:?} of {} (its role changes)", t.id),
                        Method::Delete,
                        format!("{base}/api-keys/{id}"),
                        None,
                    ));
                }
                let mut body = json!({"name": name, "role": k.role});
                if let (Some(s), Some(o)) = (&scopes_json, body.as_object_mut()) {
                    o.insert("scopes".into(), s.clone());
                }
                self.changes.push(Change {
                    what: format!("create key {name:?} ({}) for {}", k.role, t.id),
                    method: Method::Post,
                    path: format!("{base}/api-keys"),
                    body: Some(body),
                    shows_key: true,
                });
            }
            for cur in active {
                self.changes.push(change(
                    format!(
                        "revoke key {:?} of {} (not in the file)",
                        cur["name"].as_str().unwrap_or_default(),
                        t.id
                    ),
                    Method::Delete,
                    format!("{base}/api-keys/{}", cur["id"].as_str().unwrap_or_default()),
                    None,
                ));
            }
        } else {
            for (j, k) in t.api_keys.iter().flatten().enumerate() {
                if !roles.contains(&k.role) {
                    self.errors.push(format!(
                        "{at}: api_keys[{j}].role: the tenant has no policy for role {:?}",
                        k.role
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn run(m: &ArgMatches) -> Result<(), Fatal> {
    let file = m
        .get_one::<String>("file")
        .cloned()
        .ok_or_else(|| Fatal::usage("apply: name the file with -f"))?;
    let name = Path::new(&file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    let dry_run = m.get_flag("dry_run");
    let prune = m.get_flag("prune");
    let raw = read_file(Path::new(&file)).map_err(|e| Fatal::usage(format!("{file}: {e}")))?;
    let desired = check(raw).map_err(|errors| {
        Fatal::usage(
            errors
                .iter()
                .map(|e| format!("{name}: {e}"))
                .collect::<Vec<_>>()
                .join("\ntenantgate: "),
        )
    })?;
    let conn = connection(m)?;
    runtime()?.block_on(async {
        let mut planner = Planner {
            client: &conn.client,
            changes: Vec::new(),
            errors: Vec::new(),
        };
        let prune_plans = planner.plans(&desired.plans, prune).await?;
        let current = planner.get("/v1/tenants").await?;
        let by_id: BTreeMap<String, Value> = current
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["id"].as_str()?.to_owned(), t.clone())))
            .collect();
        let known_plans: BTreeSet<String> = planner
            .get("/v1/plans")
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .chain(desired.plans.iter().map(|p| p.name.clone()))
            .collect();
        for (i, t) in desired.tenants.iter().enumerate() {
            let at = format!("tenants[{i}] (id {:?})", t.id);
            if !known_plans.contains(&t.tier) {
                planner.errors.push(format!(
                    "{at}: tier: {:?} is no plan (neither in the store nor in the file)",
                    t.tier
                ));
                continue;
            }
            planner.tenant(t, &at, by_id.get(&t.id)).await?;
        }
        if !planner.errors.is_empty() {
            return Err(Fatal::usage(
                planner
                    .errors
                    .iter()
                    .map(|e| format!("{name}: {e}"))
                    .collect::<Vec<_>>()
                    .join("\ntenantgate: "),
            ));
        }
        if prune {
            let declared: BTreeSet<&str> = desired.tenants.iter().map(|t| t.id.as_str()).collect();
            for id in by_id.keys() {
                if !declared.contains(id.as_str()) {
                    planner.changes.push(change(
                        format!("delete tenant {id}"),
                        Method::Delete,
                        format!("/v1/tenants/{id}"),
                        None,
                    ));
                }
            }
        }
        planner.changes.extend(prune_plans);
        let changes = planner.changes;
        if changes.is_empty() {
            println!("no changes");
            return Ok(());
        }
        let verb = if dry_run { "would" } else { "will" };
        println!("{} change(s) {verb} be made:", changes.len());
        for c in &changes {
            println!("  {}", c.what);
        }
        if dry_run {
            println!("dry run: nothing was changed");
            return Ok(());
        }
        for (n, c) in changes.iter().enumerate() {
            let answer = conn
                .client
                .send(c.method, &c.path, &[], c.body.as_ref())
                .await
                .map_err(|f| {
                    Fatal::runtime(format!(
                        "{} failed after {n} of {} change(s): {}",
                        c.what,
                        changes.len(),
                        f.message
                    ))
                })?;
            if c.shows_key {
                if let Some(key) = answer["key"].as_str() {
                    println!(
                        "  key {:?} of {}: {key}   (shown once; store it now)",
                        answer["name"].as_str().unwrap_or_default(),
                        c.path.split('/').nth(3).unwrap_or_default()
                    );
                }
            }
        }
        println!("applied {} change(s)", changes.len());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        match check(v) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn every_bad_entry_is_named() {
        let e = errors(
            r#"
plans:
  - name: gold
    rate_limit: {max_requests: 0, window_seconds: 60}
tenants:
  - id: acme
    name: Acme
    tier: gold
  - id: Bad_Id
    name: x
    tier: pro
  - id: beta
    name: Beta
    tier: pro
    rate_limit: {max_requests: 10, window_seconds: 0}
    api_keys: [{name: k, role: developer, scopes: [{action: fly, resource: x}]}]
  - id: gamma
    nmae: typo
"#,
        );
        let all = e.join("\n");
        assert!(
            all.contains("plans[0] (name \"gold\"): rate_limit.max_requests"),
            "{all}"
        );
        assert!(all.contains("tenants[1] (id \"Bad_Id\"): id"), "{all}");
        assert!(
            all.contains("tenants[2] (id \"beta\"): rate_limit.window_seconds"),
            "{all}"
        );
        assert!(
            all.contains("tenants[2] (id \"beta\"): api_keys[0].scopes[0].action"),
            "{all}"
        );
        assert!(
            all.contains("tenants[3] (id \"gamma\"): nmae: unknown field `nmae`"),
            "{all}"
        );
        assert_eq!(e.len(), 5, "{all}");
    }

    #[test]
    fn a_good_file_passes() {
        assert!(errors(
            r#"
tenants:
  - id: acme
    name: Acme
    tier: pro
    policies: [{role: auditor, permissions: [{action: read, resource: "*"}]}]
    quota: {period: month, max_requests: 1000}
    domains: [api.acme.example]
    api_keys: [{name: ci, role: auditor}]
"#
        )
        .is_empty());
    }
}
