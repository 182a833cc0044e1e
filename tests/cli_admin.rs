#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin API's CLI through the real binary against a running stack: every
//! resource and verb, `--output json|table`, the token and URL from the environment
//! or flags, and the exit codes (0 success, 1 API error with its message, 2 usage).

mod common;

use common::{free_port, stack, Stack, TOKEN};
use serde_json::Value;
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `tenantgate ARGS` with the stack's admin URL and the platform token in the
/// environment.
fn tg(s: &Stack, args: &[&str]) -> Out {
    tg_env(
        args,
        &[
            ("TENANTGATE_ADMIN_URL", &s.admin),
            ("TENANTGATE_ADMIN_TOKEN", TOKEN),
        ],
    )
}

fn tg_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenantgate"));
    c.args(args)
        .env_remove("TENANTGATE_ADMIN_URL")
        .env_remove("TENANTGATE_ADMIN_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The API's own error message for a request, to compare with what the CLI prints.
async fn api_message(s: &Stack, method: &str, path: &str) -> String {
    let (_, v) = s.admin(method, path, None).await;
    v["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tenants_verbs_outputs_and_exit_codes() {
    let s = stack().start().await;

    let created = tg(
        &s,
        &[
            "tenants",
            "create",
            "--id",
            "acme",
            "--name",
            "Acme Corp",
            "--tier",
            "pro",
            "--admin-email",
            "admin@acme.test",
            "--admin-password",
            "password-acme",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(created["id"], "acme");
    assert_eq!(created["tier"], "pro");
    assert_eq!(created["admin_user"]["email"], "admin@acme.test");

    // The `--data` escape hatch, with a flag overriding one of its fields.
    let beta = tg(
        &s,
        &[
            "tenants",
            "create",
            "--data",
            r#"{"id":"beta","name":"Beta","tier":"pro",
            "admin_user":{"email":"admin@beta.test","password":"password-beta"}}"#,
            "--tier",
            "free",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        (beta["id"].as_str(), beta["tier"].as_str()),
        (Some("beta"), Some("free"))
    );

    let table = tg(&s, &["tenants", "list"]).ok().stdout;
    let header = table.lines().next().unwrap();
    for col in ["ID", "NAME", "TIER", "STATUS", "CREATED_AT"] {
        assert!(header.contains(col), "{table}");
    }
    let acme = table.lines().find(|l| l.starts_with("acme ")).unwrap();
    assert!(
        acme.contains("Acme Corp") && acme.contains("pro") && acme.contains("active"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("beta ")), "{table}");

    let list = tg(&s, &["tenants", "list", "-o", "json"]).ok().json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&"acme") && ids.contains(&"beta"), "{list}");

    let got = tg(&s, &["tenants", "get", "acme", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["name"], "Acme Corp");
    let shown = tg(&s, &["tenants", "get", "acme"]).ok().stdout;
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("id:") && l.ends_with(" acme")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("tier:") && l.ends_with(" pro")),
        "{shown}"
    );

    let updated = tg(
        &s,
        &[
            "tenants",
            "update",
            "acme",
            "--name",
            "Acme Inc",
            "--status",
            "suspended",
        ],
    )
    .ok()
    .stdout;
    assert!(
        updated.contains("Acme Inc") && updated.contains("suspended"),
        "{updated}"
    );
    let got = tg(&s, &["tenants", "get", "acme", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        (got["name"].as_str(), got["status"].as_str()),
        (Some("Acme Inc"), Some("suspended"))
    );

    // API errors: exit 1 with the API's message.
    let missing = tg(&s, &["tenants", "get", "nope"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(missing.stdout.is_empty(), "{}", missing.stdout);
    let msg = api_message(&s, "GET", "/v1/tenants/nope").await;
    assert!(
        missing.stderr.contains(&msg),
        "{} lacks {msg}",
        missing.stderr
    );
    let bad = tg(&s, &["tenants", "update", "acme", "--tier", "platinum"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("tier"), "{}", bad.stderr);
    let dup = tg(
        &s,
        &[
            "tenants", "create", "--id", "acme", "--name", "Again", "--tier", "free",
        ],
    );
    assert_eq!(dup.code, 1, "{}", dup.stderr);

    // Usage errors: exit 2.
    for args in [
        &["tenants", "frobnicate"][..],
        &["tenants", "get"],
        &["tenants", "create", "--data", "[1]"],
        &["tenants", "create", "--data", "{not json"],
        &["tenants", "list", "--output", "yaml"],
        &["keys", "list"],
        &["keys", "rotate", "--tenant", "acme"],
    ] {
        let out = tg(&s, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    let no_token = tg_env(&["tenants", "list"], &[("TENANTGATE_ADMIN_URL", &s.admin)]);
    assert_eq!(no_token.code, 2, "{}", no_token.stderr);
    assert!(
        no_token.stderr.contains("TENANTGATE_ADMIN_TOKEN"),
        "{}",
        no_token.stderr
    );

    // Flags instead of the environment; a bad token and an unreachable API are exit 1.
    let flags = tg_env(
        &[
            "tenants",
            "get",
            "beta",
            "--admin-url",
            &s.admin,
            "--token",
            TOKEN,
        ],
        &[],
    );
    assert_eq!(
        flags.ok().stdout.lines().count(),
        6,
        "one line per field (upstream_pool too)"
    );
    let unauth = tg_env(
        &[
            "tenants",
            "list",
            "--admin-url",
            &s.admin,
            "--token",
            "wrong",
        ],
        &[],
    );
    assert_eq!(unauth.code, 1, "{}", unauth.stderr);
    assert!(unauth.stderr.contains("unauthorized"), "{}", unauth.stderr);
    assert!(!unauth.stderr.contains("wrong"), "{}", unauth.stderr);
    let down = format!("http://127.0.0.1:{}", free_port());
    let refused = tg_env(
        &["tenants", "list", "--admin-url", &down, "--token", TOKEN],
        &[],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot reach"),
        "{}",
        refused.stderr
    );

    // A tenant admin's login token: its own tenant only.
    let own = s.tenant_admin_token("beta").await;
    let env = [
        ("TENANTGATE_ADMIN_URL", s.admin.as_str()),
        ("TENANTGATE_ADMIN_TOKEN", own.as_str()),
    ];
    tg_env(&["tenants", "get", "beta"], &env).ok();
    let other = tg_env(&["tenants", "get", "acme"], &env);
    assert_eq!(other.code, 1, "{}", other.stderr);
    let listing = tg_env(&["tenants", "list"], &env);
    assert_eq!(listing.code, 1, "{}", listing.stderr);

    let deleted = tg(&s, &["tenants", "delete", "acme"]).ok().stdout;
    assert!(deleted.contains("acme"), "{deleted}");
    let deleted = tg(&s, &["tenants", "delete", "beta", "-o", "json"])
        .ok()
        .json();
    assert_eq!(deleted["id"], "beta");
    assert_eq!(tg(&s, &["tenants", "get", "acme"]).code, 1);
}

#[tokio::test]
async fn keys_users_policies_and_usage() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    let t = ["--tenant", "acme"];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(t.iter())
            .map(|a| (*a).to_owned())
            .collect()
    };
    let run = |args: &[&str]| {
        let v = with(args);
        tg(&s, &v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Keys: the secret is printed on create and rotate, never listed.
    let key = run(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--role",
        "developer",
        "-o",
        "json",
    ])
    .ok()
    .json();
    let (secret, id) = (key["key"].as_str().unwrap(), key["id"].as_str().unwrap());
    assert!(secret.starts_with("tg_"), "{key}");
    let (status, _) = s.with_key("GET", "/api/v1/whoami", secret).await;
    assert_eq!(status, 200);
    let table = run(&["keys", "create", "--name", "other", "--role", "read_only"]).ok();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("key:") && l.contains("tg_")),
        "{}",
        table.stdout
    );
    let other_id = table
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned();
    let list = run(&["keys", "list"]).ok().stdout;
    assert!(list.lines().next().unwrap().contains("PREFIX"), "{list}");
    assert!(
        list.contains(id) && list.contains("ci") && list.contains("developer"),
        "{list}"
    );
    assert!(!list.contains(secret), "{list}");
    let listed = run(&["keys", "list", "-o", "json"]).ok();
    assert!(!listed.stdout.contains(secret));
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    let got = run(&["keys", "get", id, "-o", "json"]).ok().json();
    assert_eq!(
        (got["name"].as_str(), got["key"].as_str()),
        (Some("ci"), None)
    );
    let by_prefix = run(&["keys", "get", key["prefix"].as_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(by_prefix["id"], id);
    let patched = run(&[
        "keys",
        "update",
        id,
        "--allowed-cidrs",
        "10.0.0.0/8,127.0.0.1",
        "-o",
        "json",
    ])
    .ok()
    .stdout;
    assert!(patched.contains("10.0.0.0/8"), "{patched}");
    let bad_cidr = run(&["keys", "update", id, "--allowed-cidrs", "not-a-cidr"]);
    assert_eq!(bad_cidr.code, 1, "{}", bad_cidr.stderr);
    assert!(
        bad_cidr.stderr.contains("allowed_cidrs"),
        "{}",
        bad_cidr.stderr
    );
    let unknown = run(&["keys", "get", "nope"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);

    let rotated = run(&["keys", "rotate", id, "--grace-seconds", "0", "-o", "json"])
        .ok()
        .json();
    let new_secret = rotated["key"].as_str().unwrap();
    assert!(
        new_secret.starts_with("tg_") && new_secret != secret,
        "{rotated}"
    );
    let new_id = rotated["id"].as_str().unwrap();
    let revoked = run(&["keys", "revoke", new_id]).ok().stdout;
    assert!(revoked.contains("revoked"), "{revoked}");
    run(&["keys", "delete", &other_id, "-o", "json"])
        .ok()
        .json();
    let again = run(&["keys", "revoke", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(again.code, 1, "{}", again.stderr);

    // Users, found by id or email.
    let user = run(&[
        "users",
        "create",
        "--email",
        "dev@acme.test",
        "--password",
        "password-123",
        "--role",
        "developer",
        "-o",
        "json",
    ])
    .ok()
    .json();
    let uid = user["id"].as_str().unwrap();
    let users = run(&["users", "list"]).ok().stdout;
    assert!(users.lines().next().unwrap().contains("EMAIL"), "{users}");
    assert!(users.contains("dev@acme.test"), "{users}");
    assert_eq!(
        run(&["users", "get", "dev@acme.test", "-o", "json"])
            .ok()
            .json()["id"],
        uid
    );
    let changed = run(&["users", "update", uid, "--role", "read_only", "-o", "json"])
        .ok()
        .json();
    assert_eq!(changed["role"], "read_only");
    let bad_role = run(&["users", "update", uid, "--role", "nosuchrole"]);
    assert_eq!(bad_role.code, 1, "{}", bad_role.stderr);
    assert!(
        bad_role.stderr.contains("nosuchrole"),
        "{}",
        bad_role.stderr
    );
    run(&["users", "delete", uid]).ok();
    assert_eq!(run(&["users", "get", uid]).code, 1);

    // Policies: create and update by PUT with repeated --permission.
    let policies = run(&["policies", "list"]).ok().stdout;
    for role in ["admin", "developer", "read_only"] {
        assert!(policies.lines().any(|l| l.starts_with(role)), "{policies}");
    }
    let dev = run(&["policies", "get", "developer", "-o", "json"])
        .ok()
        .json();
    assert_eq!(dev["role"], "developer");
    run(&[
        "policies",
        "create",
        "auditor",
        "--permission",
        "read:resources",
    ])
    .ok();
    let auditor = run(&[
        "policies",
        "update",
        "auditor",
        "--permission",
        "read:resources",
        "--permission",
        "update:resources",
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(
        auditor["permissions"].as_array().unwrap().len(),
        2,
        "{auditor}"
    );
    let shown = run(&["policies", "get", "auditor"]).ok().stdout;
    assert!(
        shown.contains("read:resources, update:resources"),
        "{shown}"
    );
    assert_eq!(
        run(&["policies", "create", "x", "--permission", "read"]).code,
        2
    );
    // No DELETE route for policies (yet): the API's refusal is printed, exit 1.
    let del = run(&["policies", "delete", "auditor"]);
    assert_eq!(del.code, 1, "{}", del.stderr);
    assert!(del.stderr.contains("method_not_allowed"), "{}", del.stderr);

    // Usage: JSON as the API answers it; the table ends with a total row.
    let usage = run(&["usage", "get", "--granularity", "hour", "-o", "json"])
        .ok()
        .json();
    assert_eq!(usage["tenant_id"], "acme");
    assert!(usage["totals"]["requests"].as_u64().is_some(), "{usage}");
    let table = run(&["usage", "get"]).ok().stdout;
    assert!(
        table.lines().next().unwrap().starts_with("BUCKET_START"),
        "{table}"
    );
    assert!(
        table.lines().last().unwrap().starts_with("total"),
        "{table}"
    );
    let bad = run(&["usage", "get", "--granularity", "week"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("granularity"), "{}", bad.stderr);
}

#[tokio::test]
async fn plans_list_get_create_and_update_keeping_other_fields() {
    let s = stack().start().await;
    let plans = tg(&s, &["plans", "list", "-o", "json"]).ok().json();
    assert!(plans.to_string().contains("enterprise"), "{plans}");
    let pro = tg(&s, &["plans", "get", "pro", "-o", "json"]).ok().json();
    assert_eq!(pro["rate_limit"]["max_requests"], 1000);
    tg(
        &s,
        &[
            "plans",
            "create",
            "team",
            "--max-requests",
            "50",
            "--window-seconds",
            "60",
        ],
    )
    .ok();
    // update keeps what its flags do not name.
    let team = tg(
        &s,
        &[
            "plans",
            "update",
            "team",
            "--max-requests",
            "70",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(team["rate_limit"]["max_requests"], 70);
    assert_eq!(team["rate_limit"]["window_seconds"], 60);
    let table = tg(&s, &["plans", "list"]).ok().stdout;
    assert!(
        table.lines().next().unwrap().contains("RATE_LIMIT"),
        "{table}"
    );
    assert!(table.contains("team"), "{table}");
    let nope = tg(&s, &["plans", "get", "nope"]);
    assert_eq!(nope.code, 1, "{}", nope.stderr);
    assert!(nope.stderr.contains("plan not found"), "{}", nope.stderr);
    let bad = tg(&s, &["plans", "update", "team", "--window-seconds", "0"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("window_seconds"), "{}", bad.stderr);
    assert_eq!(tg(&s, &["plans", "update", "team", "--burst", "x"]).code, 2);
}
