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
