//! `tenantgate up`: the whole stack in one process on the embedded defaults.

use crate::{
    bind, check_listen_free, control_runtime, effective_routes, init_logging, load, open_store,
    Fatal,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use tenantgate_core::config::Config;
use tenantgate_core::domain::{ApiKeyRecord, Tier};
use tenantgate_core::secrets;
use tenantgate_core::store::{NewTenant, Store};

const TOKEN_SETTING: &str = "bootstrap_token_sha256";
pub const DEMO_TENANT: &str = "demo";

/// The admin token's digest, and the token itself when it was generated just now.
async fn resolve_bootstrap(
    cfg: &Config,
    store: &Store,
) -> Result<([u8; 32], Option<String>), Fatal> {
    if let Some(t) = &cfg.admin.bootstrap_token {
        return Ok((Sha256::digest(t.as_bytes()).into(), None));
    }
    let err = |e: tenantgate_core::StoreError| Fatal::runtime(format!("store.url: {e}"));
    let decode = |hexed: &str| -> Result<[u8; 32], Fatal> {
        let v = hex::decode(hexed)
            .map_err(|_| Fatal::runtime("stored bootstrap token digest is corrupt"))?;
        v.try_into()
            .map_err(|_| Fatal::runtime("stored bootstrap token digest is corrupt"))
    };
    if let Some(existing) = store.get_setting(TOKEN_SETTING).await.map_err(err)? {
        return Ok((decode(&existing)?, None));
    }
    let token = format!("tga_{}", secrets::random_token(40));
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if store
        .put_setting_if_absent(TOKEN_SETTING, &hex::encode(digest))
        .await
        .map_err(err)?
    {
        Ok((digest, Some(token)))
    } else {
        let existing = store
            .get_setting(TOKEN_SETTING)
            .await
            .map_err(err)?
            .ok_or_else(|| Fatal::runtime("bootstrap token setting vanished"))?;
        Ok((decode(&existing)?, None))
    }
}

/// On first start: the `demo` tenant and a developer key for it (returned once).
async fn seed_demo(cfg: &Config, store: &Store) -> Result<Option<String>, Fatal> {
    let err =
        |e: tenantgate_core::StoreError| Fatal::runtime(format!("seeding the demo tenant: {e}"));
    if store.get_tenant(DEMO_TENANT).await.map_err(err)?.is_some() {
        return Ok(None);
    }
    store
        .create_tenant(&NewTenant {
            id: DEMO_TENANT.into(),
            name: "Demo tenant".into(),
            tier: Tier::Pro,
            admin_user: None,
        })
        .await
        .map_err(err)?;
    let generated = secrets::generate_api_key();
    let now = chrono::Utc::now();
    store
        .create_api_key(&ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: DEMO_TENANT.into(),
            prefix: generated.prefix.clone(),
            digest: secrets::api_key_digest(&generated.key, cfg.api_key_pepper()),
            name: "demo key".into(),
            role: "developer".into(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
        })
        .await
        .map_err(err)?;
    Ok(Some(generated.key))
}

pub fn run(path: Option<&Path>) -> Result<(), Fatal> {
    let cfg = load(path)?;
    init_logging(&cfg);
    let rt = control_runtime()?;
    let store = rt.block_on(open_store(&cfg.store.url, cfg.store.pool_size()))?;
    let (token_sha, new_token) = rt.block_on(resolve_bootstrap(&cfg, &store))?;
    let kek = rt
        .block_on(tenantgate_admin::load_kek(&cfg))
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    let opts = tenantgate_admin::AdminOptions {
        bootstrap_token_sha256: token_sha,
        issuer: cfg.admin.issuer.clone(),
        token_ttl_seconds: cfg.admin.token_ttl_seconds,
        api_key_pepper: cfg.api_key_pepper().map(<[u8]>::to_vec),
        kek,
    };
    let admin_state = rt
        .block_on(tenantgate_admin::build_state(store.clone(), opts))
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    let demo_url = cfg
        .upstream_demo
        .store_url
        .clone()
        .unwrap_or(cfg.store.url.clone());
    let demo_state = rt
        .block_on(tenantgate_demo::init(&demo_url))
        .map_err(|e| Fatal::runtime(format!("upstream_demo: {e}")))?;
    let demo_key = rt.block_on(seed_demo(&cfg, &store))?;

    let admin_listener = rt.block_on(bind(cfg.admin.listen, "admin.listen"))?;
    let demo_listener = rt.block_on(bind(cfg.upstream_demo.listen, "upstream_demo.listen"))?;
    check_listen_free(cfg.proxy.listen, "proxy.listen")?;

    let routes = effective_routes(&cfg);
    let (gate, balancers, shared) =
        tenantgate_proxy::server::build_gate(&cfg, store.clone(), &routes)
            .map_err(Fatal::runtime)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tenantgate_proxy::server::start_background(rt.handle(), &cfg, &shared, rx.clone())
        .map_err(Fatal::runtime)?;
    let mut rx_admin = rx.clone();
    rt.spawn(async move {
        let stop = async move {
            let _ = rx_admin.changed().await;
        };
        if let Err(e) = tenantgate_admin::serve(admin_listener, admin_state, stop).await {
            tracing::error!(error = %e, "admin API failed");
        }
    });
    let mut rx_demo = rx;
    rt.spawn(async move {
        let stop = async move {
            let _ = rx_demo.changed().await;
        };
        if let Err(e) = tenantgate_demo::serve(demo_listener, demo_state, stop).await {
            tracing::error!(error = %e, "demo upstream failed");
        }
    });

    print_banner(&cfg, new_token.as_deref(), demo_key.as_deref());
    let server = tenantgate_proxy::server::pingora_server(&cfg, gate, balancers);
    tenantgate_proxy::server::run_until_shutdown(rt.handle(), server, &shared, tx);
    rt.block_on(store.close());
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

fn print_banner(cfg: &Config, new_token: Option<&str>, demo_key: Option<&str>) {
    let proxy = cfg.proxy.listen;
    let mut s = String::new();
    s.push_str("tenantgate is up\n");
    s.push_str(&format!(
        "  proxy          http://{proxy}   (health, metrics: http://{}/health)\n",
        cfg.proxy.admin_listen
    ));
    s.push_str(&format!(
        "  admin API      http://{}/v1\n",
        cfg.admin.listen
    ));
    s.push_str(&format!(
        "  demo upstream  http://{}\n",
        cfg.upstream_demo.listen
    ));
    s.push_str(&format!(
        "  store          {}\n",
        crate::redact_url(&cfg.store.url)
    ));
    match new_token {
        Some(t) => s.push_str(&format!(
            "  admin token    {t}\n                 (shown once; only its digest is stored. Set TENANTGATE_ADMIN_TOKEN to choose your own.)\n"
        )),
        None if cfg.admin.bootstrap_token.is_some() => {
            s.push_str("  admin token    from the config / TENANTGATE_ADMIN_TOKEN\n")
        }
        None => s.push_str(
            "  admin token    generated on first start and shown then; set TENANTGATE_ADMIN_TOKEN to replace it\n",
        ),
    }
    match demo_key {
        Some(k) => {
            s.push_str(&format!(
                "  demo API key   {k}   (tenant `demo`, role developer; shown once)\n"
            ));
            s.push_str("\nTry:\n");
            s.push_str(&format!(
                "  curl -s -H 'X-API-Key: {k}' http://{proxy}/api/v1/whoami\n"
            ));
            s.push_str(&format!(
                "  curl -s -H 'X-API-Key: {k}' -H 'content-type: application/json' -d '{{\"name\":\"hello\"}}' http://{proxy}/api/v1/resources\n"
            ));
        }
        None => {
            s.push_str("\nThe demo tenant exists already; make a key with:\n");
            s.push_str(&format!(
                "  curl -s -X POST -H \"Authorization: Bearer $TENANTGATE_ADMIN_TOKEN\" -H 'content-type: application/json' -d '{{\"name\":\"k\",\"role\":\"developer\"}}' http://{}/v1/tenants/demo/api-keys\n",
                cfg.admin.listen
            ));
        }
    }
    print!("{s}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
