//! `tenantgate apply -f FILE` through the real binary: creates, reports no changes
//! the second time, `--dry-run` changes nothing, `--prune` deletes what the file
//! does not name, and a bad file is refused whole, naming the file and the entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stack, Stack, TOKEN};
use serde_json::json;
use std::path::Path;
use std::process::Output;

fn apply(s: &Stack, file: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .arg("apply")
        .arg("-f")
        .arg(file)
        .args(extra)
        .env("TENANTGATE_ADMIN_URL", &s.admin)
        .env("TENANTGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const FILE: &str = r#"
plans:
  - name: gold
    rate_limit: {max_requests: 500, window_seconds: 60}
    quota: {period: month, max_requests: 100000}
tenants:
  - id: acme
    name: Acme Corp
    tier: gold
    policies:
      - role: auditor
        permissions: [{action: read, resource: "*"}]
    rate_limit: {max_requests: 100, window_seconds: 60, burst: 20}
    quota: {period: day, max_requests: 5000}
    domains: [api.acme.example]
    api_keys:
      - {name: ci, role: developer}
      - {name: audit, role: auditor, scopes: [{action: read, resource: resources}]}
  - id: beta
    name: Beta
    tier: pro
    status: suspended
"#;

#[tokio::test]
async fn apply_makes_the_store_match_the_file() {
    let s = stack().start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apply.yaml");
    std::fs::write(&file, FILE).unwrap();

    // Dry run: the changes are printed, none is made.
    let out = apply(&s, &file, &["--dry-run"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("create tenant acme"), "{stdout}");
    assert!(stdout.contains("create plan gold"), "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    let (st, _) = s.admin("GET", "/v1/tenants/acme", None).await;
    assert_eq!(st, 404);
    let (st, _) = s.admin("GET", "/v1/plans/gold", None).await;
    assert_eq!(st, 404);

    // Apply: everything exists as declared; each new key's secret printed once.
    let out = apply(&s, &file, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.matches("tg_").count(), 2, "{stdout}");
    let (_, t) = s.admin("GET", "/v1/tenants/acme", None).await;
    assert_eq!(
        (t["name"].as_str(), t["tier"].as_str()),
        (Some("Acme Corp"), Some("gold"))
    );
    let (_, t) = s.admin("GET", "/v1/tenants/beta", None).await;
    assert_eq!(t["status"], "suspended");
    let (_, p) = s
        .admin("GET", "/v1/tenants/acme/policies/auditor", None)
        .await;
    assert_eq!(
        p["permissions"],
        json!([{"action": "read", "resource": "*"}])
    );
    let (_, rl) = s.admin("GET", "/v1/tenants/acme/rate-limit", None).await;
    assert_eq!(
        (
            rl["max_requests"].as_u64(),
            rl["burst"].as_u64(),
            rl["source"].as_str()
        ),
        (Some(100), Some(20), Some("tenant"))
    );
    let (_, q) = s.admin("GET", "/v1/tenants/acme/quota", None).await;
    assert_eq!(
        (q["period"].as_str(), q["max_requests"].as_u64()),
        (Some("day"), Some(5000))
    );
    let (_, d) = s.admin("GET", "/v1/tenants/acme/domains", None).await;
    assert_eq!(d[0]["domain"], "api.acme.example");
    let (_, keys) = s.admin("GET", "/v1/tenants/acme/api-keys", None).await;
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{keys}");
    assert!(names.contains(&"ci") && names.contains(&"audit"));
    // The printed key works at the proxy.
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with("tg_"))
        .unwrap()
        .to_owned();
    let (st, _, _) = s
        .call("GET", "/api/v1/resources", &[("x-api-key", &key)], None)
        .await;
    assert_eq!(st, 200);

    // Idempotent.
    let out = apply(&s, &file, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "no changes");

    // A changed file: only the difference; an absent rate limit returns to the plan.
    let changed = FILE
        .replace("name: Acme Corp", "name: Acme Inc")
        .replace(
            "    rate_limit: {max_requests: 100, window_seconds: 60, burst: 20}\n",
            "",
        )
        .replace(
            "      - {name: ci, role: developer}\n",
            "      - {name: ci, role: read_only}\n",
        );
    std::fs::write(&file, &changed).unwrap();
    let out = apply(&s, &file, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("update tenant acme: name"), "{stdout}");
    assert!(stdout.contains("back to its plan's"), "{stdout}");
    assert!(stdout.contains("revoke key \"ci\""), "{stdout}");
    let (_, rl) = s.admin("GET", "/v1/tenants/acme/rate-limit", None).await;
    assert_eq!(rl["source"], "plan");
    let out = apply(&s, &file, &[]);
    assert_eq!(text(&out).0.trim(), "no changes");

    // A bad file: every bad entry named, nothing applied, exit 2.
    let bad = dir.path().join("apply.yaml");
    std::fs::write(
        &bad,
        r#"
tenants:
  - id: newt
    name: Newt
    tier: pro
  - id: gamma
    name: Gamma
    tier: pro
  - id: beta
    name: Beta
    tier: pro
    rate_limit: {max_requests: 0, window_seconds: 60}
  - id: delta
    name: Delta
    tier: platinum
"#,
    )
    .unwrap();
    let out = apply(&s, &bad, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("apply.yaml: tenants[2] (id \"beta\"): rate_limit.max_requests"),
        "{stderr}"
    );
    let (st, _) = s.admin("GET", "/v1/tenants/newt", None).await;
    assert_eq!(st, 404, "half applied");
    // A reference only the store can refute is refused before any change too.
    std::fs::write(
        &bad,
        "tenants:\n  - {id: newt, name: Newt, tier: pro}\n  - {id: delta, name: Delta, tier: platinum}\n",
    )
    .unwrap();
    let out = apply(&s, &bad, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("tenants[1] (id \"delta\"): tier"),
        "{stderr}"
    );
    let (st, _) = s.admin("GET", "/v1/tenants/newt", None).await;
    assert_eq!(st, 404, "half applied");
    // Not a file at all; an API error is exit 1.
    let out = apply(&s, &dir.path().join("missing.yaml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--admin-url", &s.admin, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Prune: tenants (the seeded demo too) and custom plans the file does not name.
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/plans/silver",
            Some(json!({"rate_limit": {"max_requests": 10, "window_seconds": 60}})),
        )
        .await;
    assert_eq!(st, 200);
    let toml = dir.path().join("only-acme.toml");
    std::fs::write(
        &toml,
        r#"
[[plans]]
name = "gold"
rate_limit = { max_requests = 500, window_seconds = 60 }
quota = { period = "month", max_requests = 100000 }

[[tenants]]
id = "acme"
name = "Acme Inc"
tier = "gold"
quota = { period = "day", max_requests = 5000 }
"#,
    )
    .unwrap();
    let out = apply(&s, &toml, &["--prune", "--dry-run"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("delete tenant beta"), "{stdout}");
    assert!(stdout.contains("delete tenant demo"), "{stdout}");
    assert!(stdout.contains("delete plan silver"), "{stdout}");
    assert!(!stdout.contains("delete plan pro"), "{stdout}");
    let (st, _) = s.admin("GET", "/v1/tenants/beta", None).await;
    assert_eq!(st, 200);
    let out = apply(&s, &toml, &["--prune"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let (_, all) = s.admin("GET", "/v1/tenants", None).await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme"]);
    let (st, _) = s.admin("GET", "/v1/plans/silver", None).await;
    assert_eq!(st, 404);
    let (st, _) = s.admin("GET", "/v1/plans/pro", None).await;
    assert_eq!(st, 200);
    let out = apply(&s, &toml, &["--prune"]);
    assert_eq!(text(&out).0.trim(), "no changes");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef"),
        ("fish", "complete -c"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(text.contains(marker), "{shell}");
        assert!(
            text.contains("explain") && text.contains("apply"),
            "{shell}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
