//! What the CLI knows of each admin API resource: its verbs (method and path), the
//! flags that fill a request body or query, and the columns of its table. The verbs
//! themselves are generic (`super::run`).

use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verb {
    List,
    Get,
    Create,
    Update,
    Delete,
    Revoke,
    Rotate,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Revoke => "revoke",
            Verb::Rotate => "rotate",
        }
    }

    pub const ALL: [Verb; 7] = [
        Verb::List,
        Verb::Get,
        Verb::Create,
        Verb::Update,
        Verb::Delete,
        Verb::Revoke,
        Verb::Rotate,
    ];
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// One verb of a resource. `path` holds `{tenant}` (from `--tenant`) and `{id}` (the
/// positional argument).
pub struct Op {
    pub verb: Verb,
    pub method: Method,
    pub path: &'static str,
    /// The API has no route for one object: list, then pick the entry whose
    /// `find_by` field equals the argument.
    pub find_by: &'static [&'static str],
    /// A `PUT` that replaces the whole object: fetch it first (`GET path`) so the
    /// flags change only what they name.
    pub merge_current: bool,
    pub about: &'static str,
}

impl Op {
    const fn new(verb: Verb, method: Method, path: &'static str, about: &'static str) -> Op {
        Op {
            verb,
            method,
            path,
            find_by: &[],
            merge_current: false,
            about,
        }
    }

    const fn find(mut self, by: &'static [&'static str]) -> Op {
        self.find_by = by;
        self
    }

    const fn merged(mut self) -> Op {
        self.merge_current = true;
        self
    }

    /// Whether the verb names one object (a positional argument).
    pub fn takes_id(&self) -> bool {
        !self.find_by.is_empty() || self.path.contains("{id}")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Str,
    Int,
    /// Comma-separated or repeated: a JSON array of strings.
    List,
    /// Repeated `action:resource`: a JSON array of `{action, resource}`.
    Permissions,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    Body,
    Query,
}

/// A flag that sets one field of the request (`key` is its JSON path).
pub struct Field {
    pub flag: &'static str,
    pub key: &'static [&'static str],
    pub kind: Kind,
    pub place: Place,
    pub verbs: &'static [Verb],
    pub help: &'static str,
}

const fn body(
    flag: &'static str,
    key: &'static [&'static str],
    kind: Kind,
    verbs: &'static [Verb],
    help: &'static str,
) -> Field {
    Field {
        flag,
        key,
        kind,
        place: Place::Body,
        verbs,
        help,
    }
}

const fn query(
    flag: &'static str,
    key: &'static [&'static str],
    verbs: &'static [Verb],
    help: &'static str,
) -> Field {
    Field {
        flag,
        key,
        kind: Kind::Str,
        place: Place::Query,
        verbs,
        help,
    }
}

pub struct Resource {
    pub name: &'static str,
    pub about: &'static str,
    /// The positional argument's name in help (`ID`, `ROLE`, `NAME`).
    pub id_name: &'static str,
    pub tenant_scoped: bool,
    pub ops: &'static [Op],
    pub fields: &'static [Field],
    pub columns: &'static [&'static str],
    /// Rows of the table for a response (default: the array, or the object alone).
    pub rows: Option<fn(&Value) -> Vec<Value>>,
    /// Names the object in messages ("api key", "tenant").
    pub noun: &'static str,
}

impl Resource {
    pub fn op(&self, verb: Verb) -> Option<&Op> {
        self.ops.iter().find(|o| o.verb == verb)
    }
}

use Kind::{Int, List, Permissions, Str};
use Method as M;
use Verb::{Create, Delete, Get, List as Ls, Revoke, Rotate, Update};

pub static RESOURCES: &[Resource] = &[
    Resource {
        name: "tenants",
        about: "Tenants (platform token)",
        id_name: "ID",
        tenant_scoped: false,
        noun: "tenant",
        ops: &[
            Op::new(Ls, M::Get, "/v1/tenants", "List the tenants"),
            Op::new(Get, M::Get, "/v1/tenants/{id}", "Show one tenant"),
            Op::new(
                Create,
                M::Post,
                "/v1/tenants",
                "Create a tenant (with its default policies and limit)",
            ),
            Op::new(
                Update,
                M::Patch,
                "/v1/tenants/{id}",
                "Change a tenant's name, tier, status or allowed CIDRs",
            ),
            Op::new(Delete, M::Delete, "/v1/tenants/{id}", "Delete a tenant"),
        ],
        fields: &[
            body(
                "id",
                &["id"],
                Str,
                &[Create],
                "Tenant id ([a-z0-9][a-z0-9-]{1,62}); generated when absent",
            ),
            body("name", &["name"], Str, &[Create, Update], "Display name"),
            body(
                "tier",
                &["tier"],
                Str,
                &[Create, Update],
                "free | pro | enterprise (or another plan)",
            ),
            body("status", &["status"], Str, &[Update], "active | suspended"),
            body(
                "admin-email",
                &["admin_user", "email"],
                Str,
                &[Create],
                "Email of the tenant's first admin user",
            ),
            body(
                "admin-password",
                &["admin_user", "password"],
                Str,
                &[Create],
                "Password of the tenant's first admin user",
            ),
            body(
                "allowed-cidrs",
                &["allowed_cidrs"],
                List,
                &[Update],
                "Addresses the tenant's requests may come from (comma-separated)",
            ),
            body(
                "upstream-pool",
                &["upstream_pool"],
                Str,
                &[Update],
                "The [[upstream_pools]] entry the tenant's requests go to (silo tenants)",
            ),
        ],
        columns: &["id", "name", "tier", "status", "created_at"],
        rows: None,
    },
    Resource {
        name: "keys",
        about: "A tenant's API keys",
        id_name: "KEY_ID",
        tenant_scoped: true,
        noun: "api key",
        ops: &[
            Op::new(
                Ls,
                M::Get,
                "/v1/tenants/{tenant}/api-keys",
                "List the tenant's keys (never their secrets)",
            ),
            Op::new(
                Get,
                M::Get,
                "/v1/tenants/{tenant}/api-keys",
                "Show one key (by id or prefix)",
            )
            .find(&["id", "prefix"]),
            Op::new(
                Create,
                M::Post,
                "/v1/tenants/{tenant}/api-keys",
                "Create a key; its secret is printed once",
            ),
            Op::new(
                Update,
                M::Patch,
                "/v1/tenants/{tenant}/api-keys/{id}",
                "Change a key's allowed CIDRs or scopes",
            ),
            Op::new(
                Delete,
                M::Delete,
                "/v1/tenants/{tenant}/api-keys/{id}",
                "Revoke a key (same as revoke)",
            ),
            Op::new(
                Revoke,
                M::Delete,
                "/v1/tenants/{tenant}/api-keys/{id}",
                "Revoke a key",
            ),
            Op::new(
                Rotate,
                M::Post,
                "/v1/tenants/{tenant}/api-keys/{id}/rotate",
                "Replace a key; the new secret is printed once",
            ),
        ],
        fields: &[
            body("name", &["name"], Str, &[Create], "Display name"),
            body(
                "role",
                &["role"],
                Str,
                &[Create],
                "A role with a policy in the tenant",
            ),
            body(
                "expires-at",
                &["expires_at"],
                Str,
                &[Create],
                "RFC 3339 expiry",
            ),
            body(
                "scope",
                &["scopes"],
                Permissions,
                &[Create, Update],
                "action:resource the key is limited to (repeatable)",
            ),
            body(
                "allowed-cidrs",
                &["allowed_cidrs"],
                List,
                &[Create, Update],
                "Addresses the key may be used from (comma-separated)",
            ),
            body(
                "grace-seconds",
                &["grace_seconds"],
                Int,
                &[Rotate],
                "How long the old key keeps working (default 0)",
            ),
        ],
        columns: &[
            "id",
            "prefix",
            "name",
            "role",
            "status",
            "created_at",
            "expires_at",
        ],
        rows: None,
    },
    Resource {
        name: "users",
        about: "A tenant's users",
        id_name: "USER_ID",
        tenant_scoped: true,
        noun: "user",
        ops: &[
            Op::new(
                Ls,
                M::Get,
                "/v1/tenants/{tenant}/users",
                "List the tenant's users",
            ),
            Op::new(
                Get,
                M::Get,
                "/v1/tenants/{tenant}/users",
                "Show one user (by id or email)",
            )
            .find(&["id", "email"]),
            Op::new(
                Create,
                M::Post,
                "/v1/tenants/{tenant}/users",
                "Create a user",
            ),
            Op::new(
                Update,
                M::Patch,
                "/v1/tenants/{tenant}/users/{id}",
                "Change a user's role, status or password",
            ),
            Op::new(
                Delete,
                M::Delete,
                "/v1/tenants/{tenant}/users/{id}",
                "Delete a user",
            ),
        ],
        fields: &[
            body(
                "email",
                &["email"],
                Str,
                &[Create],
                "Email (the login name)",
            ),
            body(
                "password",
                &["password"],
                Str,
                &[Create, Update],
                "Password (8 to 1024 characters)",
            ),
            body(
                "role",
                &["role"],
                Str,
                &[Create, Update],
                "A role with a policy in the tenant",
            ),
            body("status", &["status"], Str, &[Update], "active | disabled"),
        ],
        columns: &["id", "email", "role", "status", "created_at"],
        rows: None,
    },
    Resource {
        name: "policies",
        about: "A tenant's role policies",
        id_name: "ROLE",
        tenant_scoped: true,
        noun: "policy",
        ops: &[
            Op::new(
                Ls,
                M::Get,
                "/v1/tenants/{tenant}/policies",
                "List every role's policy",
            ),
            Op::new(
                Get,
                M::Get,
                "/v1/tenants/{tenant}/policies/{id}",
                "Show one role's policy",
            ),
            Op::new(
                Create,
                M::Put,
                "/v1/tenants/{tenant}/policies/{id}",
                "Create a role's policy",
            ),
            Op::new(
                Update,
                M::Put,
                "/v1/tenants/{tenant}/policies/{id}",
                "Replace a role's permissions",
            ),
            Op::new(
                Delete,
                M::Delete,
                "/v1/tenants/{tenant}/policies/{id}",
                "Delete a role's policy",
            ),
        ],
        fields: &[body(
            "permission",
            &["permissions"],
            Permissions,
            &[Create, Update],
            "action:resource, e.g. read:resources or *:* (repeatable)",
        )],
        columns: &["role", "permissions"],
        rows: None,
    },
    Resource {
        name: "plans",
        about: "Plans: the rate limit and quota a tier names",
        id_name: "NAME",
        tenant_scoped: false,
        noun: "plan",
        ops: &[
            Op::new(Ls, M::Get, "/v1/plans", "List the plans"),
            Op::new(Get, M::Get, "/v1/plans/{id}", "Show one plan"),
            Op::new(Create, M::Put, "/v1/plans/{id}", "Create a plan"),
            Op::new(
                Update,
                M::Put,
                "/v1/plans/{id}",
                "Change a plan (fields not given are kept)",
            )
            .merged(),
            Op::new(Delete, M::Delete, "/v1/plans/{id}", "Delete a plan"),
        ],
        fields: &[
            body(
                "max-requests",
                &["rate_limit", "max_requests"],
                Int,
                &[Create, Update],
                "Requests per window",
            ),
            body(
                "window-seconds",
                &["rate_limit", "window_seconds"],
                Int,
                &[Create, Update],
                "Window length in seconds",
            ),
            body(
                "burst",
                &["rate_limit", "burst"],
                Int,
                &[Create, Update],
                "Burst above the steady rate",
            ),
            body(
                "quota-period",
                &["quota", "period"],
                Str,
                &[Create, Update],
                "day | month",
            ),
            body(
                "quota-max-requests",
                &["quota", "max_requests"],
                Int,
                &[Create, Update],
                "Requests per quota period",
            ),
        ],
        columns: &["name", "rate_limit", "quota"],
        rows: None,
    },
    Resource {
        name: "usage",
        about: "A tenant's usage series and totals",
        id_name: "TENANT",
        tenant_scoped: true,
        noun: "usage",
        ops: &[
            Op::new(
                Get,
                M::Get,
                "/v1/tenants/{tenant}/usage",
                "Usage series and totals over a range",
            ),
            Op::new(Ls, M::Get, "/v1/tenants/{tenant}/usage", "Same as get"),
        ],
        fields: &[
            query(
                "from",
                &["from"],
                &[Get, Ls],
                "RFC 3339 start (default: 24 h before --to)",
            ),
            query("to", &["to"], &[Get, Ls], "RFC 3339 end (default: now)"),
            query(
                "granularity",
                &["granularity"],
                &[Get, Ls],
                "minute | hour | day",
            ),
            query(
                "group-by",
                &["group_by"],
                &[Get, Ls],
                "api_key: add each key's totals",
            ),
        ],
        columns: &[
            "bucket_start",
            "requests",
            "rate_limited",
            "denied",
            "upstream_errors",
            "bytes_in",
            "bytes_out",
        ],
        rows: Some(usage_rows),
    },
];

/// The series, then a `total` row.
fn usage_rows(v: &Value) -> Vec<Value> {
    let mut rows: Vec<Value> = v
        .get("series")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(totals)) = v.get("totals") {
        let mut t = totals.clone();
        t.insert("bucket_start".into(), json!("total"));
        rows.push(Value::Object(t));
    }
    rows
}

pub fn find(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbs the CLI sends although the admin API has no such operation yet (the API's
    /// refusal is then printed, exit 1). When the API gains one, drop it from here.
    const NOT_IN_API: &[(&str, Verb)] = &[("policies", Verb::Delete)];

    fn method(m: Method) -> &'static str {
        match m {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }

    /// `/v1/tenants/{}/users/{}` for any parameter names.
    fn shape(path: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Every verb is an operation of the admin API's OpenAPI document, and every body
    /// flag names a property of that operation's request body.
    #[test]
    fn the_table_matches_the_openapi_document() {
        let doc = serde_json::to_value(tenantgate_admin::openapi::document()).unwrap_or_default();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        for r in RESOURCES {
            for op in r.ops {
                let found = paths
                    .iter()
                    .find(|(p, _)| shape(p) == shape(op.path))
                    .and_then(|(_, item)| item.get(method(op.method)));
                let exception = NOT_IN_API.contains(&(r.name, op.verb));
                let Some(operation) = found else {
                    assert!(
                        exception,
                        "{} {}: {:?} {} is not in /openapi.json",
                        r.name,
                        op.verb.name(),
                        op.method,
                        op.path
                    );
                    continue;
                };
                assert!(
                    !exception,
                    "{} {} is in the API now: drop it from NOT_IN_API",
                    r.name,
                    op.verb.name()
                );
                let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
                // `{$ref}`, or `oneOf: [null, {$ref}]` for an optional body.
                let reference = std::iter::once(schema)
                    .chain(schema["oneOf"].as_array().into_iter().flatten())
                    .find_map(|s| s["$ref"].as_str());
                let schema = match reference {
                    Some(rf) => {
                        &doc["components"]["schemas"][rf.rsplit('/').next().unwrap_or_default()]
                    }
                    None => schema,
                };
                for f in r
                    .fields
                    .iter()
                    .filter(|f| f.place == Place::Body && f.verbs.contains(&op.verb))
                {
                    let top = f.key[0];
                    assert!(
                        schema["properties"].get(top).is_some(),
                        "{} {} --{}: {top} is not a property of the request body {schema}",
                        r.name,
                        op.verb.name(),
                        f.flag
                    );
                }
            }
        }
    }
}
