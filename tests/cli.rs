#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The binary's command line: config validation and its exit codes.

use std::process::Command;

fn tg(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenantgate"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "tg_cli_{}",
        tenantgate_core::secrets::random_token(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    for f in ["config/tenantgate.toml", "config/fleet.example.toml"] {
        let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
        let (code, out, err) = tg(&["check-config", &path], &[]);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.contains("ok"), "{out}");
    }
}

#[test]
fn bad_configs_exit_2_naming_the_key_in_one_line() {
    let cases = [
        (
            "[metering]\nflush_interval_ms = \"abc\"\n",
            "metering.flush_interval_ms",
        ),
        ("[proxy]\nlisten = \"nope\"\n", "proxy.listen"),
        (
            "[ratelimit]\nbackend = \"memcached\"\n",
            "ratelimit.backend",
        ),
        ("[store]\nurl = \"mysql://x\"\n", "store.url"),
        (
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"nohost\"\n",
            "routes[0].upstream",
        ),
        ("[proxy\n", "line"),
        (
            "[proxy]\nheader_timeout_ms = 5\n",
            "proxy.header_timeout_ms",
        ),
        (
            "[proxy]\nkeepalive_timeout_seconds = 0\n",
            "proxy.keepalive_timeout_seconds",
        ),
        (
            "[proxy]\nmax_connections = 99999999999\n",
            "proxy.max_connections",
        ),
        (
            "[retention]\nusage_minute_days = 0\n",
            "retention.usage_minute_days",
        ),
        (
            "[retention]\nchanges_hours = -1\n",
            "retention.changes_hours",
        ),
        (
            "[retention]\naudit_days = \"forever\"\n",
            "retention.audit_days",
        ),
        (
            "[retention]\nusage_minute_days = 30\nusage_hour_days = 7\n",
            "retention.usage_hour_days",
        ),
        (
            "[proxy.tls]\nlisten = \"127.0.0.1:8443\"\ncert_file = \"/nonexistent/server.pem\"\nkey_file = \"/nonexistent/server.key\"\n",
            "proxy.tls.cert_file",
        ),
        (
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"https://api.example:443\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "routes[0].ca_file",
        ),
    ];
    for (text, key) in cases {
        let p = write("bad.toml", text);
        let (code, _, err) = tg(&["check-config", &p], &[]);
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err}");
        assert!(err.contains(&p), "names the file: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn admin_without_a_token_fails_naming_the_key() {
    let p = write("admin.toml", "[admin]\nlisten = \"127.0.0.1:1\"\n");
    let (code, _, err) = tg(&["admin", "--config", &p], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin.bootstrap_token"), "{err}");
}

#[test]
fn env_overrides_are_validated_too() {
    let p = write("ok.toml", "");
    let (code, _, err) = tg(
        &["check-config", &p],
        &[("TENANTGATE__PROXY__THREADS", "0")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("proxy.threads"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = tg(&["check-config", "/nonexistent/tenantgate.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/tenantgate.toml"), "{err}");
}

#[test]
fn insecure_jwks_urls_and_bad_lifetimes_fail_at_startup_naming_the_key() {
    let issuer = |extra: &str| {
        format!("[[jwt.issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"a\"]\n{extra}\n")
    };
    for (text, key) in [
        (
            issuer("jwks_url = \"http://idp.example/jwks\""),
            "jwt.issuers[0].jwks_url",
        ),
        (
            issuer("jwks_url = \"https://idp.example/jwks\"\nmax_lifetime_seconds = 0"),
            "jwt.issuers[0].max_lifetime_seconds",
        ),
    ] {
        let p = write("jwks.toml", &text);
        let (code, _, err) = tg(&["check-config", &p], &[]);
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err}");
    }
    // Loopback over http is fine; anything else needs [jwt] allow_insecure_jwks.
    let p = write(
        "loop.toml",
        &issuer("jwks_url = \"http://127.0.0.1:9/jwks\""),
    );
    assert_eq!(tg(&["check-config", &p], &[]).0, 0);
    let p = write(
        "allowed.toml",
        &format!(
            "[jwt]\nallow_insecure_jwks = true\n{}",
            issuer("jwks_url = \"http://idp.example/jwks\"")
        ),
    );
    assert_eq!(tg(&["check-config", &p], &[]).0, 0);
}

#[test]
fn tls_key_files_that_are_missing_or_do_not_fit_fail_naming_the_key() {
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let cert_file = write("server.pem", &cert.pem());
    let key_file = write("server.key", &kp.serialize_pem());
    let other_key = write("other.key", &other.serialize_pem());
    let tls = |cert: &str, key: &str, sni: &str| {
        format!("[proxy.tls]\nlisten = \"127.0.0.1:8443\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{sni}")
    };
    let sni = |key: &str| {
        format!("[[proxy.tls.sni]]\nserver_names = [\"*.acme.example\"]\ncert_file = \"{cert_file}\"\nkey_file = \"{key}\"\n")
    };
    let ok = write("ok.toml", &tls(&cert_file, &key_file, &sni(&key_file)));
    let (code, _, err) = tg(&["check-config", &ok], &[]);
    assert_eq!(code, 0, "{err}");
    for (text, key) in [
        (
            tls(&cert_file, "/nonexistent/server.key", ""),
            "proxy.tls.key_file",
        ),
        (tls(&cert_file, &other_key, ""), "proxy.tls.key_file"),
        (tls(&key_file, &key_file, ""), "proxy.tls.cert_file"),
        (
            tls(&cert_file, &key_file, &sni("/nonexistent/k")),
            "proxy.tls.sni[0].key_file",
        ),
    ] {
        let p = write("bad.toml", &text);
        for args in [
            vec!["check-config", p.as_str()],
            vec!["proxy", "--config", p.as_str()],
        ] {
            let (code, _, err) = tg(&args, &[]);
            assert_eq!(code, 2, "{args:?} {text}: {err}");
            assert!(err.contains(key), "{text}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        }
    }
}

#[test]
fn silo_and_autoscale_configs_fail_naming_the_key() {
    let route = "[[routes]]\nprefix = \"/a/\"\nupstream = \"127.0.0.1:9000\"\n";
    let pool = |name: &str, up: &str| {
        format!("[[upstream_pools]]\nname = \"{name}\"\nupstream = \"{up}\"\n")
    };
    let scale = |body: &str| format!("{route}[[autoscale]]\nroute = \"/a/\"\n{body}\n");
    for (text, key) in [
        (pool("big", "nohost"), "upstream_pools[0].upstream"),
        (pool("big", "127.0.0.1:0"), "upstream_pools[0].upstream"),
        (
            format!(
                "{}{}",
                pool("big", "127.0.0.1:9001"),
                pool("big", "127.0.0.1:9002")
            ),
            "upstream_pools[1].name",
        ),
        (pool("Big Pool", "127.0.0.1:9001"), "upstream_pools[0].name"),
        (
            format!("{route}tenant_upstreams = {{ \"acme\" = \"not an address\" }}\n"),
            "routes[0].tenant_upstreams.acme",
        ),
        (
            format!("{route}tenant_upstreams = {{ \"Not_A_Tenant\" = \"127.0.0.1:9001\" }}\n"),
            "routes[0].tenant_upstreams.Not_A_Tenant",
        ),
        (
            format!(
                "{route}public = true\ntenant_upstreams = {{ \"acme\" = \"127.0.0.1:9001\" }}\n"
            ),
            "routes[0].tenant_upstreams.acme",
        ),
        (
            format!("{route}name = \"x\"\n{route}name = \"x\"\n").replacen("/a/", "/b/", 1),
            "routes[1].name",
        ),
        (
            format!("{route}[[autoscale]]\nroute = \"/nope/\"\ntarget_rps_per_replica = 10\n"),
            "autoscale[0].route",
        ),
        (
            scale("target_rps_per_replica = 10\nmin = 5\nmax = 2"),
            "autoscale[0].min",
        ),
        (
            scale("target_rps_per_replica = 0"),
            "autoscale[0].target_rps_per_replica",
        ),
        (
            scale("target_rps_per_replica = -3.5"),
            "autoscale[0].target_rps_per_replica",
        ),
        (scale("min = 1"), "autoscale[0]"),
        (
            scale("target_rps_per_replica = 10\nmax = 0"),
            "autoscale[0].max",
        ),
        (
            format!(
                "{}[[autoscale]]\nroute = \"/a/\"\ntarget_rps_per_replica = 5\n",
                scale("target_rps_per_replica = 10")
            ),
            "autoscale[1].route",
        ),
        (
            "[scaling]\nevaluate_interval_ms = 0\n".to_owned(),
            "scaling.evaluate_interval_ms",
        ),
    ] {
        let p = write("silo.toml", &text);
        let (code, _, err) = tg(&["check-config", &p], &[]);
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    let ok = format!(
        "{route}name = \"api\"\ntenant_upstreams = {{ \"acme\" = \"127.0.0.1:9001\", \"globex\" = [\"127.0.0.1:9002\", \"127.0.0.1:9003\"] }}\n{}[[autoscale]]\nroute = \"api\"\ntarget_rps_per_replica = 50\nmin = 2\nmax = 20\ncooldown_seconds = 30\nscale_down_stabilisation_seconds = 120\n",
        pool("big", "127.0.0.1:9004")
    );
    let p = write("ok.toml", &ok);
    let (code, _, err) = tg(&["check-config", &p], &[]);
    assert_eq!(code, 0, "{err}");
}

fn simulate(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["simulate-scaling"];
    all.extend_from_slice(args);
    tg(&all, &[])
}

#[test]
fn simulate_scaling_replays_a_trace_and_summarises() {
    let trace = write("trace.csv", "second,rps\n0,40\n10,400\n100,40\n400,40\n");
    let (code, out, err) = simulate(&[
        "--trace",
        &trace,
        "--target-rps-per-replica",
        "100",
        "--min",
        "1",
        "--max",
        "3",
        "--cooldown-seconds",
        "5",
        "--scale-down-stabilisation-seconds",
        "60",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scale up"), "{out}");
    assert!(out.contains("scale down"), "{out}");
    assert!(out.contains("peak replicas 3"), "{out}");
    // 400 rps from 10 s to 99 s on at most 3 replicas of 100: all 90 s short.
    assert!(out.contains("seconds under-provisioned 90"), "{out}");
    assert!(out.contains("events 2"), "{out}");

    // The same policy from a config file, as JSON.
    let cfg = write(
        "scale.toml",
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"127.0.0.1:9000\"\nname = \"api\"\n\
         [[autoscale]]\nroute = \"api\"\ntarget_rps_per_replica = 100\nmin = 1\nmax = 3\n\
         cooldown_seconds = 5\nscale_down_stabilisation_seconds = 60\n",
    );
    let (code, out, err) = simulate(&[
        "--trace", &trace, "--config", &cfg, "--route", "api", "--output", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"], "api");
    assert_eq!(v["summary"]["peak_replicas"], 3);
    assert_eq!(v["summary"]["under_provisioned_seconds"], 90);
    assert_eq!(v["summary"]["seconds"], 401);
    assert_eq!(v["events"][0]["second"], 10);
    assert_eq!(v["events"][0]["to_replicas"], 3);
    assert_eq!(v["events"][1]["second"], 160);
    assert_eq!(v["events"][1]["to_replicas"], 1);
    // Flags override the config's values; the route may be named by prefix.
    let (code, out, _) = simulate(&[
        "--trace", &trace, "--config", &cfg, "--route", "/api/", "--max", "10", "-o", "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["peak_replicas"], 4);
    assert_eq!(v["summary"]["under_provisioned_seconds"], 1);
}

#[test]
fn simulate_scaling_bad_traces_and_flags_exit_2() {
    let flags = ["--target-rps-per-replica", "10"];
    for (text, needle) in [
        ("second,rps\n0,1\nten,4\n", "line 3"),
        ("0,1\n1,-2\n", "line 2"),
        ("0,1\n1\n", "line 2"),
        ("0,1\n5,1\n3,1\n", "line 3"),
        ("0,1\n1,2,3\n", "line 2"),
        ("", "no `second,rps` rows"),
    ] {
        let trace = write("bad.csv", text);
        let mut args = vec!["--trace", trace.as_str()];
        args.extend_from_slice(&flags);
        let (code, out, err) = simulate(&args);
        assert_eq!(code, 2, "{text:?}: {out}{err}");
        assert!(err.contains(needle), "{text:?}: {err}");
        assert!(err.contains(&trace), "names the file: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    let trace = write("ok.csv", "0,1\n");
    for (args, needle) in [
        (
            vec![
                "--trace",
                "/nonexistent/trace.csv",
                "--target-rps-per-replica",
                "1",
            ],
            "/nonexistent/trace.csv",
        ),
        (vec!["--trace", trace.as_str()], "--target-rps-per-replica"),
        (
            vec!["--trace", trace.as_str(), "--target-rps-per-replica", "0"],
            "--target-rps-per-replica",
        ),
        (
            vec![
                "--trace",
                trace.as_str(),
                "--target-rps-per-replica",
                "1",
                "--min",
                "4",
                "--max",
                "2",
            ],
            "--min",
        ),
        (
            vec!["--trace", trace.as_str(), "--config", "/nonexistent/c.toml"],
            "/nonexistent/c.toml",
        ),
    ] {
        let (code, _, err) = simulate(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
