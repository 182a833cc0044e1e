//! The load harness's helper (`benches/load/run.sh` calls it; it is a bench target
//! only so that it builds with the workspace's release settings and dev-dependencies):
//!
//! ```text
//! cargo bench --bench load_helper -- keygen --dir DIR
//! cargo bench --bench load_helper -- mint   --dir DIR --out FILE --count N [--tenants N]
//!                                           [--tenant-prefix P] [--tenant T] [--exp-in S]
//! cargo bench --bench load_helper -- setup  --admin URL --token T --out DIR
//!                                           [--tenants N] [--keys-per-tenant K]
//! cargo bench --bench load_helper -- seed   --db URL --out FILE
//!                                           [--tenants N] [--keys-per-tenant K] [--pepper P]
//! ```
//!
//! - `keygen`: an RS256 key for the harness's external issuer: `private.pk8` (DER),
//!   `kid`, `public.pem` (tenantgate `public_key_file`, HAProxy `jwt_verify`) and
//!   `jwks.json` (Envoy `local_jwks`). Kept if already there.
//! - `mint`: `count` distinct RS256 tokens (one per line), round-robin over the
//!   tenants `{prefix}000`…, role `developer`, signed on all cores; `exp` is
//!   `--exp-in` seconds from now (default a day; negative: already expired).
//! - `setup`: through the admin API: `tenants` enterprise tenants `bench-000`… with
//!   `keys-per-tenant` developer keys each and a 10^9/s rate limit (`keys.txt`), a
//!   one-key tenant `bench-solo` (`solo.txt`) and a tenant `bench-tiny` limited to
//!   1 request per hour (`tiny.txt`), and for the Redis over-admission runs
//!   `bench-oa2` / `bench-oa4` limited to `OVERADMIT_LIMIT` per hour (`oa2.txt`,
//!   `oa4.txt`).
//! - `seed`: the scale data set written straight into a store with
//!   `Store::create_tenant`/`create_api_key` (digests as the admin API makes them):
//!   tenants `scale-00000`…, their keys in `--out`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use tenantgate_core::domain::{ApiKeyRecord, RateLimit, Tier};
use tenantgate_core::jwt::SigningKey;
use tenantgate_core::secrets::{api_key_digest, generate_api_key};
use tenantgate_core::store::{NewTenant, Store};

pub const ISSUER: &str = "https://idp.bench.local";
pub const AUDIENCE: &str = "tenantgate";
const HIGH_LIMIT: u64 = 1_000_000_000;
/// The hourly limit of the over-admission tenants (run.sh reads it from here).
const OVERADMIT_LIMIT: u64 = 5_000;

type Res<T> = Result<T, String>;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Res<Self> {
        let mut m = HashMap::new();
        let mut it = rest.iter();
        while let Some(k) = it.next() {
            let name = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            m.insert(name.to_owned(), v.clone());
        }
        Ok(Args(m))
    }

    fn get(&self, k: &str) -> Res<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("--{k} is required"))
    }

    fn num(&self, k: &str, default: u64) -> Res<u64> {
        match self.0.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v}")),
        }
    }

    fn opt(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(cmd) = argv.first() else {
        eprintln!("load_helper: no command (keygen|mint|setup|seed); see benches/README.md");
        return ExitCode::SUCCESS;
    };
    let result = Args::parse(&argv[1..]).and_then(|a| match cmd.as_str() {
        "keygen" => keygen(&a),
        "mint" => mint(&a),
        "setup" => runtime().block_on(setup(&a)),
        "seed" => runtime().block_on(seed(&a)),
        other => Err(format!("unknown command {other:?}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_helper {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn write(path: &Path, data: &[u8]) -> Res<()> {
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))
}

// ---- keygen / mint ---------------------------------------------------------------

fn keygen(a: &Args) -> Res<()> {
    let dir = PathBuf::from(a.get("dir")?);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if dir.join("private.pk8").exists() && dir.join("jwks.json").exists() {
        return Ok(());
    }
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    write(
        &dir.join("private.pk8"),
        &key.pkcs8_der().map_err(|e| e.to_string())?,
    )?;
    write(&dir.join("kid"), key.kid.as_bytes())?;
    write(
        &dir.join("public.pem"),
        key.public_key_pem().map_err(|e| e.to_string())?.as_bytes(),
    )?;
    let jwks = json!({ "keys": [key.public_jwk()] });
    write(&dir.join("jwks.json"), jwks.to_string().as_bytes())?;
    eprintln!("keygen: RS256 key {} in {}", key.kid, dir.display());
    Ok(())
}

fn load_key(dir: &Path) -> Res<SigningKey> {
    let der = std::fs::read(dir.join("private.pk8")).map_err(|e| e.to_string())?;
    let kid = std::fs::read_to_string(dir.join("kid")).map_err(|e| e.to_string())?;
    SigningKey::from_pkcs8(kid.trim(), &der).map_err(|e| e.to_string())
}

fn mint(a: &Args) -> Res<()> {
    let dir = PathBuf::from(a.get("dir")?);
    let out = PathBuf::from(a.get("out")?);
    let count = a.num("count", 1000)? as usize;
    let tenants = a.num("tenants", 100)?.max(1) as usize;
    let prefix = a.opt("tenant-prefix").unwrap_or("bench-").to_owned();
    let fixed = a.opt("tenant").map(str::to_owned);
    let exp_in: i64 = match a.opt("exp-in") {
        None => 86_400,
        Some(v) => v
            .parse()
            .map_err(|_| format!("--exp-in: not a number: {v}"))?,
    };
    let now = chrono::Utc::now().timestamp();
    let exp = now + exp_in;
    let key = load_key(&dir)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // A per-run nonce keeps tokens of different mint runs distinct.
    let nonce = URL_SAFE_NO_PAD.encode(tenantgate_core::secrets::random_bytes::<6>());
    let started = std::time::Instant::now();
    let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                let prefix = &prefix;
                let fixed = &fixed;
                let nonce = &nonce;
                s.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let tenant = match fixed {
                                Some(f) => f.clone(),
                                None => format!("{prefix}{:03}", i % tenants),
                            };
                            let claims = json!({
                                "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"),
                                "tenant_id": tenant, "role": "developer",
                                "iat": now - 60, "exp": exp, "jti": format!("{nonce}-{i}"),
                            });
                            key.sign(&claims).expect("sign")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("mint thread"))
            .collect()
    });
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).map_err(|e| e.to_string())?);
    for chunk in &chunks {
        for t in chunk {
            writeln!(f, "{t}").map_err(|e| e.to_string())?;
        }
    }
    f.flush().map_err(|e| e.to_string())?;
    eprintln!(
        "mint: {count} tokens in {:.1}s -> {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

// ---- setup through the admin API ---------------------------------------------------

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
        ok: &[u16],
    ) -> Res<serde_json::Value> {
        let resp = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !ok.contains(&status) {
            return Err(format!("{method} {path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    async fn tenant(&self, id: &str, limit: (u64, u64)) -> Res<()> {
        self.call(
            reqwest::Method::POST,
            "/v1/tenants",
            json!({"id": id, "name": id, "tier": "enterprise"}),
            &[201, 409],
        )
        .await?;
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{id}/rate-limit"),
            json!({"max_requests": limit.0, "window_seconds": limit.1}),
            &[200, 204],
        )
        .await?;
        Ok(())
    }

    async fn key(&self, tenant: &str, name: &str) -> Res<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/api-keys"),
                json!({"name": name, "role": "developer"}),
                &[201],
            )
            .await?;
        v["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no key in {v}"))
    }
}

async fn setup(a: &Args) -> Res<()> {
    let out = PathBuf::from(a.get("out")?);
    let tenants = a.num("tenants", 100)? as usize;
    let per = a.num("keys-per-tenant", 10)? as usize;
    let admin = std::sync::Arc::new(Admin {
        http: reqwest::Client::new(),
        base: a.get("admin")?.trim_end_matches('/').to_owned(),
        token: a.get("token")?.to_owned(),
    });
    let started = std::time::Instant::now();
    // 8 tenants at a time, each creating its keys in turn.
    let mut keys: Vec<String> = Vec::with_capacity(tenants * per);
    let ids: Vec<usize> = (0..tenants).collect();
    for batch in ids.chunks(8) {
        let jobs = batch.iter().map(|&i| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let id = format!("bench-{i:03}");
                admin.tenant(&id, (HIGH_LIMIT, 1)).await?;
                let mut ks = Vec::with_capacity(per);
                for k in 0..per {
                    ks.push(admin.key(&id, &format!("load-{k}")).await?);
                }
                Res::Ok(ks)
            })
        });
        for r in futures_join(jobs).await {
            keys.extend(r?);
        }
    }
    admin.tenant("bench-solo", (HIGH_LIMIT, 1)).await?;
    let solo = admin.key("bench-solo", "solo").await?;
    admin.tenant("bench-tiny", (1, 3600)).await?;
    let tiny = admin.key("bench-tiny", "tiny").await?;
    // The over-admission runs: one tenant per proxy count, OVERADMIT_LIMIT per hour.
    for n in [2, 4] {
        let id = format!("bench-oa{n}");
        admin.tenant(&id, (OVERADMIT_LIMIT, 3600)).await?;
        let k = admin.key(&id, "oa").await?;
        write(&out.join(format!("oa{n}.txt")), format!("{k}\n").as_bytes())?;
    }
    // Interleave tenants so that consecutive requests hit different tenants.
    let mut interleaved = Vec::with_capacity(keys.len());
    for k in 0..per {
        for t in 0..tenants {
            interleaved.push(keys[t * per + k].clone());
        }
    }
    write(
        &out.join("keys.txt"),
        (interleaved.join("\n") + "\n").as_bytes(),
    )?;
    write(&out.join("solo.txt"), format!("{solo}\n").as_bytes())?;
    write(&out.join("tiny.txt"), format!("{tiny}\n").as_bytes())?;
    eprintln!(
        "setup: {tenants} tenants x {per} keys (+ solo, tiny, oa2, oa4) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn futures_join<T: Send + 'static>(
    jobs: impl Iterator<Item = tokio::task::JoinHandle<Res<T>>>,
) -> Vec<Res<T>> {
    let mut out = Vec::new();
    for j in jobs.collect::<Vec<_>>() {
        out.push(j.await.map_err(|e| e.to_string()).and_then(|r| r));
    }
    out
}

// ---- seed the scale data set -------------------------------------------------------

async fn seed(a: &Args) -> Res<()> {
    let url = a.get("db")?;
    let out = PathBuf::from(a.get("out")?);
    let tenants = a.num("tenants", 10_000)? as usize;
    let per = a.num("keys-per-tenant", 10)? as usize;
    let pepper = a.opt("pepper").map(str::as_bytes);
    let store = Store::open(url, 4).await.map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let limit = RateLimit {
        max_requests: HIGH_LIMIT,
        window_seconds: 1,
        burst: None,
    };
    let mut keys: Vec<String> = Vec::with_capacity(tenants * per);
    // Each tenant's rows in one task; 4 tasks at a time (SQLite serialises writes
    // anyway, this only overlaps the key generation and hashing).
    let ids: Vec<usize> = (0..tenants).collect();
    for batch in ids.chunks(4) {
        let jobs = batch.iter().map(|&i| {
            let store = store.clone();
            let pepper = pepper.map(<[u8]>::to_vec);
            tokio::spawn(async move {
                let id = format!("scale-{i:05}");
                let err = |e: tenantgate_core::StoreError| format!("{id}: {e}");
                store
                    .create_tenant(&NewTenant {
                        id: id.clone(),
                        name: id.clone(),
                        tier: Tier::Enterprise,
                        admin_user: None,
                    })
                    .await
                    .map_err(err)?;
                store.put_rate_limit(&id, &limit).await.map_err(err)?;
                let mut ks = Vec::with_capacity(per);
                for k in 0..per {
                    let g = generate_api_key();
                    store
                        .create_api_key(&ApiKeyRecord {
                            id: uuid::Uuid::new_v4().to_string(),
                            tenant_id: id.clone(),
                            prefix: g.prefix.clone(),
                            digest: api_key_digest(&g.key, pepper.as_deref()),
                            name: format!("scale-{k}"),
                            role: "developer".into(),
                            created_at: chrono::Utc::now(),
                            expires_at: None,
                            revoked_at: None,
                            extras: Default::default(),
                        })
                        .await
                        .map_err(err)?;
                    ks.push(g.key);
                }
                Res::Ok(ks)
            })
        });
        for r in futures_join(jobs).await {
            keys.extend(r?);
        }
        if batch[0] % 1000 == 0 && batch[0] > 0 {
            eprintln!(
                "seed: {} tenants, {:.0}s",
                batch[0],
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await;
    write(&out, (keys.join("\n") + "\n").as_bytes())?;
    eprintln!(
        "seed: {tenants} tenants x {per} keys in {:.1}s -> {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
