use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml_str(text, "test.toml", &[])
}

#[test]
fn defaults_are_valid() {
    let c = parse("").unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(c.store.url, "sqlite://data/tenantgate.db");
    assert_eq!(c.metering.flush_interval, std::time::Duration::from_secs(1));
    assert_eq!(c.store.max_connections, 4);
}

#[test]
fn pool_size_defaults_per_backend_and_refuses_zero() {
    let pg = parse("[store]\nurl = \"postgres://u@127.0.0.1/db\"").unwrap();
    assert_eq!(pg.store.max_connections, 10);
    let set = parse("[store]\nmax_connections = 7").unwrap();
    assert_eq!(set.store.max_connections, 7);
    let err = parse("[store]\nmax_connections = 0").unwrap_err();
    assert!(err.to_string().contains("store.max_connections"), "{err}");
}

#[test]
fn contract_example_parses() {
    let c = parse(
        r#"
[proxy]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
[admin]
listen = "127.0.0.1:8081"
bootstrap_token = "tok"
[upstream_demo]
listen = "127.0.0.1:8082"
[store]
url = "sqlite://data/tenantgate.db"
[redis]
url = "redis://127.0.0.1:6379"
[ratelimit]
backend = "local"
fail_mode = "open"
[metering]
flush_interval_ms = 1000
[[jwt.issuers]]
issuer = "https://idp.example.com"
audiences = ["tenantgate"]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:9999/.well-known/jwks.json"
tenant_claim = "tenant_id"
role_claim = "role"
[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:8082"
resource = "resources"
public = false
[[routes]]
prefix = "/pub/"
upstream = ["127.0.0.1:8082", "127.0.0.1:8083"]
public = true
"#,
    )
    .unwrap();
    assert_eq!(c.jwt.issuers.len(), 1);
    assert_eq!(c.routes[1].upstreams.len(), 2);
    assert_eq!(c.admin.bootstrap_token.as_deref(), Some("tok"));
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("[proxy]\nlisten = \"nope\"", "proxy.listen"),
        ("[metering]\nflush_interval_ms = \"abc\"", "metering.flush_interval_ms"),
        ("[metering]\nflush_interval_ms = 0", "metering.flush_interval_ms"),
        ("[ratelimit]\nbackend = \"memcached\"", "ratelimit.backend"),
        ("[ratelimit]\nfail_mode = \"maybe\"", "ratelimit.fail_mode"),
        ("[ratelimit]\nbackend = \"redis\"", "redis.url"),
        ("[store]\nurl = \"mysql://x\"", "store.url"),
        ("[proxy]\nlistn = \"127.0.0.1:1\"", "proxy"),
        ("[[routes]]\nprefix = \"api\"\nupstream = \"127.0.0.1:1\"", "routes[0].prefix"),
        ("[[routes]]\nprefix = \"/a\"\nupstream = \"localhost\"", "routes[0].upstream"),
        (
            "[[jwt.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\njwks_url = \"http://x\"",
            "jwt.issuers[0].algorithms",
        ),
        (
            "[[jwt.issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\npublic_key_file = \"/nonexistent.pem\"",
            "jwt.issuers[0].public_key_file",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap_err();
        assert!(
            err.key.starts_with(key),
            "{text:?}: got key {:?} ({err})",
            err.key
        );
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("test.toml"), "{line}");
    }
}

#[test]
fn syntax_errors_are_one_line() {
    let err = parse("[proxy\nlisten=").unwrap_err();
    assert!(!err.to_string().contains('\n'));
    assert!(err.key.starts_with("line"));
}

#[test]
fn env_overrides() {
    let env = vec![
        (ADMIN_TOKEN_ENV.to_owned(), "from-env".to_owned()),
        (
            "TENANTGATE__METERING__FLUSH_INTERVAL_MS".to_owned(),
            "250".to_owned(),
        ),
        (
            "TENANTGATE__STORE__URL".to_owned(),
            "postgres://u@h/db".to_owned(),
        ),
    ];
    let c = Settings::from_toml_str("[admin]\nbootstrap_token = \"file\"", "t", &env).unwrap();
    assert_eq!(c.admin.bootstrap_token.as_deref(), Some("from-env"));
    assert_eq!(
        c.metering.flush_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.store.url, "postgres://u@h/db");
    let bad = vec![(
        "TENANTGATE__METERING__FLUSH_INTERVAL_MS".to_owned(),
        "x".to_owned(),
    )];
    let err = Settings::from_toml_str("", "t", &bad).unwrap_err();
    assert_eq!(err.key, "metering.flush_interval_ms");
}

#[test]
fn admin_requires_a_token() {
    let c = parse("").unwrap();
    let err = c.require_bootstrap_token("f.toml").unwrap_err();
    assert_eq!(err.key, "admin.bootstrap_token");
}

#[test]
fn log_format_defaults_to_auto_and_refuses_others() {
    assert_eq!(parse("").unwrap().log.format, LogFormat::Auto);
    assert_eq!(
        parse("[log]\nformat = \"json\"").unwrap().log.format,
        LogFormat::Json
    );
    let err = parse("[log]\nformat = \"xml\"").unwrap_err();
    assert_eq!(err.key, "log.format");
}

#[test]
fn settings_resolve_durations_routes_and_the_demo_store() {
    let c = parse(
        "[proxy]\ncache_ttl_seconds = 5\nnegative_cache_ttl_ms = 250\n\
         [store]\nurl = \"postgres://u@h/db\"\n\
         [[routes]]\nprefix = \"/a/\"\nupstream = \"127.0.0.1:1\"",
    )
    .unwrap();
    assert_eq!(c.proxy.cache_ttl, std::time::Duration::from_secs(5));
    assert_eq!(
        c.proxy.negative_cache_ttl,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.store.backend, StoreBackend::Postgres);
    assert_eq!(c.demo.store_url, "postgres://u@h/db");
    assert_eq!(c.routes[0].upstreams, vec!["127.0.0.1:1".to_owned()]);
    assert_eq!(c.routes_or_demo(), c.routes);
    let d = Settings::default();
    assert_eq!(d.routes_or_demo()[0].prefix, "/api/v1/");
    assert!(matches!(d.ratelimit.backend, LimiterBackend::Local));
}

#[test]
fn trusted_proxies_are_cidrs_or_addresses() {
    let c = parse("[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]")
        .unwrap();
    let nets: Vec<String> = c
        .proxy
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    let err = parse("[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"ten\"]").unwrap_err();
    assert_eq!(err.key, "proxy.trusted_proxies[1]");
}

#[test]
fn assertion_keys_and_header_timeout_are_checked() {
    let d = Settings::default();
    assert!(d.assertion.enabled);
    assert_eq!(d.assertion.issuer, "tenantgate");
    assert_eq!(d.assertion.algorithm, crate::assertion::AssertionAlg::Es256);
    assert_eq!(
        d.assertion.publish_ahead,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(d.proxy.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(
        d.demo.assertion_jwks_url,
        "http://127.0.0.1:9090/.well-known/jwks.json"
    );
    let c = parse(
        "[assertion]\nalgorithm = \"EdDSA\"\nbind_request = true\n[upstream_demo]\nrequire_assertion = true\nassertion_jwks_url = \"https://jwks.example/keys\"\n[[routes]]\nprefix = \"/a/\"\nupstream = \"127.0.0.1:1\"\naudience = \"billing\"\nbind_request = false\nassertion = false\n[[routes]]\nprefix = \"/b/\"\nupstream = \"127.0.0.1:1\"",
    )
    .unwrap();
    assert_eq!(c.assertion.algorithm, crate::assertion::AssertionAlg::EdDsa);
    assert!(c.assertion.bind_request && c.demo.require_assertion);
    assert_eq!(c.demo.assertion_jwks_url, "https://jwks.example/keys");
    assert_eq!(
        (
            c.routes[0].audience.as_str(),
            c.routes[0].bind_request,
            c.routes[0].assertion
        ),
        ("billing", Some(false), false)
    );
    assert_eq!(
        (
            c.routes[1].audience.as_str(),
            c.routes[1].bind_request,
            c.routes[1].assertion
        ),
        ("/b/", None, true)
    );
    for (text, key) in [
        ("[assertion]\nalgorithm = \"RS256\"", "assertion.algorithm"),
        ("[assertion]\nalgorithm = \"none\"", "assertion.algorithm"),
        ("[assertion]\nissuer = \" \"", "assertion.issuer"),
        (
            "[assertion]\npublish_ahead_seconds = 100000",
            "assertion.publish_ahead_seconds",
        ),
        (
            "[assertion]\nrotate_after_seconds = 60",
            "assertion.rotate_after_seconds",
        ),
        ("[proxy]\nheader_timeout_ms = 0", "proxy.header_timeout_ms"),
        (
            "[proxy]\nheader_timeout_ms = 700000",
            "proxy.header_timeout_ms",
        ),
        (
            "[proxy.fairness]\nmax_delay_ms = 0",
            "proxy.fairness.max_delay_ms",
        ),
        (
            "[proxy.fairness]\ngrace_refusals = 10\nclose_after_refusals = 5",
            "proxy.fairness.close_after_refusals",
        ),
        (
            "[proxy.fairness]\nmax_held_connections = 99999999",
            "proxy.fairness.max_held_connections",
        ),
        ("[proxy.fairness]\nenabled = 1", "proxy.fairness.enabled"),
        (
            "[upstream_demo]\nassertion_jwks_url = \"ftp://x\"",
            "upstream_demo.assertion_jwks_url",
        ),
        (
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"127.0.0.1:1\"\naudience = \"\"",
            "routes[0].audience",
        ),
    ] {
        assert_eq!(parse(text).unwrap_err().key, key, "{text}");
    }
}

#[test]
fn fairness_is_on_by_default_and_configurable() {
    let d = Settings::default().proxy.fairness;
    assert!(d.enabled);
    assert_eq!(d.grace_refusals, 10);
    assert_eq!(d.max_delay, std::time::Duration::from_secs(1));
    assert_eq!(d.close_after_refusals, 1000);
    assert_eq!(d.max_held_connections, None);
    assert_eq!(d.ip_refusals_per_second, 0);
    let c = parse(
        "[proxy.fairness]\nenabled = false\nclose_after_refusals = 0\nmax_held_connections = 5",
    )
    .unwrap();
    assert!(!c.proxy.fairness.enabled);
    assert_eq!(c.proxy.fairness.close_after_refusals, 0);
    assert_eq!(c.proxy.fairness.max_held_connections, Some(5));
}

#[test]
fn admin_trusted_proxies_are_checked_at_startup() {
    let c = parse("[admin]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]").unwrap();
    let nets: Vec<String> = c
        .admin
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
    assert!(Settings::default().admin.trusted_proxies.is_empty());
    let err = parse("[admin]\ntrusted_proxies = [\"10.0.0.0/33\"]").unwrap_err();
    assert_eq!(err.key, "admin.trusted_proxies[0]");
}

#[test]
fn admin_explain_proxy_url_is_checked() {
    let c = parse("[admin]\nexplain_proxy_url = \"http://10.0.0.5:9090\"").unwrap();
    assert_eq!(
        c.admin.explain_proxy_url.as_deref(),
        Some("http://10.0.0.5:9090")
    );
    assert!(Settings::default().admin.explain_proxy_url.is_none());
    let err = parse("[admin]\nexplain_proxy_url = \"10.0.0.5:9090\"").unwrap_err();
    assert_eq!(err.key, "admin.explain_proxy_url");
}

#[test]
fn jwks_urls_over_plain_http_only_to_loopback_unless_allowed() {
    let issuer = |url: &str, extra: &str| {
        format!("{extra}[[jwt.issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\njwks_url = \"{url}\"\n")
    };
    for url in [
        "https://idp.example.com/jwks",
        "http://127.0.0.1:9999/jwks",
        "http://[::1]:9999/jwks",
        "http://localhost:9999/jwks",
    ] {
        assert!(parse(&issuer(url, "")).is_ok(), "{url}");
    }
    let err = parse(&issuer("http://idp.example.com/jwks", "")).unwrap_err();
    assert_eq!(err.key, "jwt.issuers[0].jwks_url", "{err}");
    assert!(err.message.contains("allow_insecure_jwks"), "{err}");
    let c = parse(&issuer(
        "http://idp.example.com/jwks",
        "[jwt]\nallow_insecure_jwks = true\n",
    ))
    .unwrap();
    assert!(c.jwt.allow_insecure_jwks);
    let err = parse(&issuer("https://user@idp/jwks", "")).unwrap_err();
    assert_eq!(err.key, "jwt.issuers[0].jwks_url", "{err}");
}

#[test]
fn issuer_max_lifetime_must_be_positive() {
    let text = |v: &str| {
        format!("[[jwt.issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\njwks_url = \"https://idp/jwks\"\nmax_lifetime_seconds = {v}\n")
    };
    let c = parse(&text("3600")).unwrap();
    assert_eq!(
        c.jwt.issuers[0].max_lifetime,
        Some(std::time::Duration::from_secs(3600))
    );
    for bad in ["0", "-1", "\"1h\""] {
        let err = parse(&text(bad)).unwrap_err();
        assert!(
            err.key.starts_with("jwt.issuers[0].max_lifetime_seconds")
                || err.key.starts_with("jwt.issuers"),
            "{bad}: {err}"
        );
    }
    let err = parse(&text("0")).unwrap_err();
    assert_eq!(err.key, "jwt.issuers[0].max_lifetime_seconds", "{err}");
}

#[test]
fn retention_defaults_fractions_and_bad_values() {
    let c = parse("").unwrap();
    assert_eq!(
        c.retention.usage_minute,
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert_eq!(
        c.retention.usage_hour,
        std::time::Duration::from_secs(400 * 86_400)
    );
    assert_eq!(
        c.retention.flush_records,
        std::time::Duration::from_secs(86_400)
    );
    assert_eq!(c.retention.changes, std::time::Duration::from_secs(86_400));
    assert_eq!(
        c.retention.audit,
        std::time::Duration::from_secs(400 * 86_400)
    );
    let c = parse("[retention]\nchanges_hours = 0.001\nusage_minute_days = 1").unwrap();
    assert_eq!(c.retention.changes, std::time::Duration::from_secs_f64(3.6));
    assert_eq!(
        c.retention.usage_minute,
        std::time::Duration::from_secs(86_400)
    );
    for (text, key) in [
        ("usage_minute_days = 0", "retention.usage_minute_days"),
        ("usage_hour_days = -1", "retention.usage_hour_days"),
        (
            "usage_minute_days = 10\nusage_hour_days = 5",
            "retention.usage_hour_days",
        ),
        ("flush_records_hours = 0", "retention.flush_records_hours"),
        ("changes_hours = nan", "retention.changes_hours"),
        ("audit_days = 1e9", "retention.audit_days"),
        ("audit_days = \"long\"", "retention.audit_days"),
        ("run_interval_seconds = 0", "retention.run_interval_seconds"),
        ("keep_forever = true", "retention"),
    ] {
        let err = parse(&format!("[retention]\n{text}")).unwrap_err();
        assert!(err.key.starts_with(key), "{text}: {err}");
    }
}

#[test]
fn tls_files_and_https_upstreams_are_checked_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let bad = |text: &str, key: &str| {
        let e = Settings::from_toml_str(text, "t.toml", &[]).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    };
    bad(
        &format!("[proxy.tls]\nlisten = \"127.0.0.1:1\"\ncert_file = \"{d}/none.pem\"\nkey_file = \"{d}/none.key\"\n"),
        "proxy.tls.cert_file",
    );
    std::fs::write(dir.path().join("junk.pem"), "not pem at all").unwrap();
    bad(
        &format!("[proxy.tls]\nlisten = \"127.0.0.1:1\"\ncert_file = \"{d}/junk.pem\"\nkey_file = \"{d}/none.key\"\n"),
        "proxy.tls.cert_file",
    );
    bad(
        &format!("[[routes]]\nprefix = \"/a/\"\nupstream = \"https://h.example:443\"\nca_file = \"{d}/none.pem\"\n"),
        "routes[0].ca_file",
    );
    bad(
        "[[routes]]\nprefix = \"/a/\"\nupstream = \"127.0.0.1:1\"\nca_file = \"x.pem\"\n",
        "routes[0].ca_file",
    );
    bad(
        "[[routes]]\nprefix = \"/a/\"\nupstream = [\"https://a:1\", \"b:1\"]\n",
        "routes[0].upstream",
    );
    let ok = Settings::from_toml_str(
        "[[routes]]\nprefix = \"/a/\"\nupstream = \"https://api.example:8443\"\n",
        "t.toml",
        &[],
    )
    .unwrap();
    assert!(ok.routes[0].tls);
    assert_eq!(ok.routes[0].upstreams, vec!["api.example:8443".to_owned()]);
    assert!(crate::config::valid_server_name("*.acme.example"));
    assert!(!crate::config::valid_server_name("a.*.example"));
    assert!(!crate::config::valid_server_name("*"));
}
