//! `tenantgate`: one binary, subcommands `up`, `proxy`, `admin`, `demo-upstream`,
//! `migrate`, `check-config`.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tenantgate_core::config::{Config, ConfigError, RouteConfig, Upstreams};
use tenantgate_core::store::Store;

mod up;

/// mimalloc instead of glibc's malloc: the proxy allocates and frees many small
/// buffers per request (headers, futures, strings); glibc's malloc/free/consolidate
/// took about a tenth of the proxy's CPU in the load harness's profiles.
/// Built with `no_thp`: mimalloc 3 otherwise asks for transparent huge pages on its
/// arenas, and every 2 MiB region touched then counts whole in the RSS (~55 MB more
/// with 100k keys cached, for no measurable throughput gain).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tenantgate",
    version,
    about = "Multi-tenancy enforcing edge proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Proxy + admin API + demo upstream in one process (embedded SQLite, local limiter).
    Up {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The proxy alone.
    Proxy {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The admin API alone.
    Admin {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The demo upstream alone.
    DemoUpstream {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Apply the store's migrations and exit.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file without starting anything.
    CheckConfig {
        /// The file to check.
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// A failure that ends the process: exit code and one line.
pub struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    pub fn runtime(message: impl Into<String>) -> Self {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Fatal {
    fn from(e: ConfigError) -> Self {
        Fatal {
            code: 2,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tenantgate: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load(path: Option<&Path>) -> Result<Config, Fatal> {
    Ok(Config::load(path)?)
}

pub fn source_name(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

pub fn control_runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tenantgate-control")
        .enable_all()
        .build()
        .map_err(|e| Fatal::runtime(format!("cannot start the runtime: {e}")))
}

pub async fn open_store(url: &str, max: u32) -> Result<Store, Fatal> {
    Store::open(url, max)
        .await
        .map_err(|e| Fatal::runtime(format!("store.url: {e}")))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn bind(addr: std::net::SocketAddr, key: &str) -> Result<tokio::net::TcpListener, Fatal> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::runtime(format!("{key} {addr}: cannot listen: {e}")))
}

/// The routes the proxy serves: the configured ones, or `/api/v1/` → the demo upstream.
pub fn effective_routes(cfg: &Config) -> Vec<RouteConfig> {
    if cfg.routes.is_empty() {
        vec![RouteConfig {
            prefix: "/api/v1/".into(),
            upstream: Upstreams::One(cfg.upstream_demo.listen.to_string()),
            resource: None,
            public: false,
        }]
    } else {
        cfg.routes.clone()
    }
}

fn run(cli: Cli) -> Result<(), Fatal> {
    match cli.cmd {
        Cmd::CheckConfig { file, config } => {
            let path = file.or(config).ok_or_else(|| Fatal {
                code: 2,
                message: "check-config: name the file to check".into(),
            })?;
            let cfg = load(Some(&path))?;
            println!(
                "{}: ok ({} route(s), {} external JWT issuer(s), store {})",
                path.display(),
                cfg.routes.len(),
                cfg.jwt.issuers.len(),
                if cfg.store.url.starts_with("sqlite:") {
                    "sqlite"
                } else {
                    "postgres"
                }
            );
            Ok(())
        }
        Cmd::Migrate { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            let rt = control_runtime()?;
            rt.block_on(async {
                let store = open_store(&cfg.store.url, 2).await?;
                store.close().await;
                println!("migrations applied to {}", redact_url(&cfg.store.url));
                Ok(())
            })
        }
        Cmd::Admin { config } => {
            let cfg = load(config.as_deref())?;
            let token = cfg
                .require_bootstrap_token(&source_name(config.as_deref()))?
                .to_owned();
            init_logging(&cfg);
            let rt = control_runtime()?;
            rt.block_on(async {
                let store = open_store(&cfg.store.url, cfg.store.pool_size()).await?;
                let kek = tenantgate_admin::load_kek(&cfg)
                    .await
                    .map_err(|e| Fatal::runtime(e.to_string()))?;
                let opts = tenantgate_admin::AdminOptions::from_config(&cfg, &token, kek);
                let state = tenantgate_admin::build_state(store.clone(), opts)
                    .await
                    .map_err(|e| Fatal::runtime(e.to_string()))?;
                let listener = bind(cfg.admin.listen, "admin.listen").await?;
                tracing::info!(listen = %cfg.admin.listen, "admin API listening");
                tenantgate_admin::serve(listener, state, shutdown_signal())
                    .await
                    .map_err(|e| Fatal::runtime(format!("admin API: {e}")))?;
                store.close().await;
                Ok(())
            })
        }
        Cmd::DemoUpstream { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            let rt = control_runtime()?;
            rt.block_on(async {
                let url = cfg
                    .upstream_demo
                    .store_url
                    .clone()
                    .unwrap_or(cfg.store.url.clone());
                let state = tenantgate_demo::init(&url)
                    .await
                    .map_err(|e| Fatal::runtime(format!("upstream_demo: {e}")))?;
                let listener = bind(cfg.upstream_demo.listen, "upstream_demo.listen").await?;
                tracing::info!(listen = %cfg.upstream_demo.listen, "demo upstream listening");
                tenantgate_demo::serve(listener, state, shutdown_signal())
                    .await
                    .map_err(|e| Fatal::runtime(format!("demo upstream: {e}")))
            })
        }
        Cmd::Proxy { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            if cfg.routes.is_empty() {
                tracing::warn!("no [[routes]] configured: every request will be 404 no_route");
            }
            let rt = control_runtime()?;
            let store = rt.block_on(open_store(&cfg.store.url, cfg.store.pool_size()))?;
            let (gate, balancers, shared) =
                tenantgate_proxy::server::build_gate(&cfg, store, &cfg.routes)
                    .map_err(Fatal::runtime)?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tenantgate_proxy::server::start_background(rt.handle(), &cfg, &shared, rx)
                .map_err(Fatal::runtime)?;
            check_listen_free(cfg.proxy.listen, "proxy.listen")?;
            let server = tenantgate_proxy::server::pingora_server(&cfg, gate, balancers);
            tracing::info!(listen = %cfg.proxy.listen, admin = %cfg.proxy.admin_listen, "proxy listening");
            tenantgate_proxy::server::run_until_shutdown(rt.handle(), server, &shared, tx);
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            Ok(())
        }
        Cmd::Up { config } => up::run(config.as_deref()),
    }
}

/// Pingora binds late and aborts on failure; check first so the error is ours.
pub fn check_listen_free(addr: std::net::SocketAddr, key: &str) -> Result<(), Fatal> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| Fatal::runtime(format!("{key} {addr}: cannot listen: {e}")))
}

/// A store URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
