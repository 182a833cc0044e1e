//! `tenantgate up`: the whole stack in one process on the embedded defaults.

use crate::stack::{sha256, Stack};
use crate::{init_logging, Fatal};
use tenantgate_core::config::Settings;
use tenantgate_core::domain::Tier;
use tenantgate_core::secrets;
use tenantgate_core::store::{NewTenant, Store};
use tenantgate_proxy::server::RouteSource;

const TOKEN_SETTING: &str = "bootstrap_token_sha256";
pub const DEMO_TENANT: &str = "demo";

/// The admin token's digest, and the token itself when it was generated just now.
async fn resolve_bootstrap(
    cfg: &Settings,
    store: &Store,
) -> Result<([u8; 32], Option<String>), Fatal> {
    if let Some(t) = &cfg.admin.bootstrap_token {
        return Ok((sha256(t.as_bytes()), None));
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
    let digest = sha256(token.as_bytes());
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
async fn seed_demo(cfg: &Settings, store: &Store) -> Result<Option<String>, Fatal> {
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
    let (record, key) = secrets::mint_api_key(
        DEMO_TENANT,
        "demo key".into(),
        "developer".into(),
        None,
        cfg.api_key_pepper(),
    );
    store.create_api_key(&record).await.map_err(err)?;
    Ok(Some(key))
}

pub fn run(cfg: Settings, source: Option<RouteSource>) -> Result<(), Fatal> {
    init_logging(&cfg);
    let stack = Stack::new(cfg)?;
    let store = stack.store()?;
    let (token_sha256, new_token) = stack.block_on(resolve_bootstrap(&stack.settings, &store))?;
    stack.start_admin(token_sha256)?;
    stack.start_demo()?;
    let demo_key = stack.block_on(seed_demo(&stack.settings, &store))?;
    let routes = stack.settings.routes_or_demo();
    let banner = {
        let cfg = stack.settings.clone();
        move || print_banner(&cfg, new_token.as_deref(), demo_key.as_deref())
    };
    stack.run_proxy(&routes, source, banner)
}

fn print_banner(cfg: &Settings, new_token: Option<&str>, demo_key: Option<&str>) {
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
    s.push_str(&format!("  demo upstream  http://{}\n", cfg.demo.listen));
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
