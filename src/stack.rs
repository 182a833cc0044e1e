//! One startup path for every command: a control runtime, the store (opened on
//! first use), and the pieces started on them. `up` starts all three pieces in
//! this one process; `proxy`, `admin` and `demo-upstream` start one each.

use crate::Fatal;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tenantgate_core::config::{RouteSettings, Settings};
use tenantgate_core::store::Store;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the listeners get to finish in-flight requests after a signal.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub struct Stack {
    pub settings: Settings,
    rt: Runtime,
    store: OnceLock<Store>,
    /// Turned true once: every piece started here stops.
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Stack {
    pub fn new(settings: Settings) -> Result<Self, Fatal> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tenantgate-control")
            .enable_all()
            .build()
            .map_err(|e| Fatal::runtime(format!("cannot start the runtime: {e}")))?;
        Ok(Stack {
            settings,
            rt,
            store: OnceLock::new(),
            shutdown: watch::channel(false).0,
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The control-plane store, connected and migrated on first use.
    pub fn store(&self) -> Result<Store, Fatal> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        let s = &self.settings.store;
        let store = self
            .rt
            .block_on(Store::open(&s.url, s.max_connections))
            .map_err(|e| Fatal::runtime(format!("store.url: {e}")))?;
        Ok(self.store.get_or_init(|| store).clone())
    }

    /// `tenantgate migrate`: applies the migrations and says so.
    pub fn migrate(&self) -> Result<(), Fatal> {
        self.store()?;
        self.close();
        println!(
            "migrations applied to {}",
            crate::redact_url(&self.settings.store.url)
        );
        Ok(())
    }

    fn bind(
        &self,
        addr: std::net::SocketAddr,
        key: &str,
    ) -> Result<tokio::net::TcpListener, Fatal> {
        self.rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| Fatal::runtime(format!("{key} {addr}: cannot listen: {e}")))
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.rt.spawn(task);
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(handle);
        }
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Starts the admin API on `admin.listen`, for the platform token whose
    /// SHA-256 is `token_sha256`.
    pub fn start_admin(&self, token_sha256: [u8; 32]) -> Result<(), Fatal> {
        let store = self.store()?;
        let kek = self
            .rt
            .block_on(tenantgate_core::sealing::load_kek(&self.settings))
            .map_err(|e| Fatal::runtime(e.to_string()))?;
        let opts = tenantgate_admin::AdminOptions::from_settings(&self.settings, token_sha256, kek);
        let state = self
            .rt
            .block_on(tenantgate_admin::build_state(store, opts))
            .map_err(|e| Fatal::runtime(e.to_string()))?;
        let listen = self.settings.admin.listen;
        let listener = self.bind(listen, "admin.listen")?;
        tracing::info!(listen = %listen, "admin API listening");
        // Rollups and retention: every admin process offers, one per pass works.
        self.spawn(tenantgate_admin::lifecycle::run(
            state.clone(),
            self.shutdown.subscribe(),
        ));
        // Autoscaling: likewise, one process per pass evaluates the policies.
        self.spawn(tenantgate_admin::scaling::run(
            state.clone(),
            self.shutdown.subscribe(),
        ));
        let stop = self.stopped();
        self.spawn(async move {
            if let Err(e) = tenantgate_admin::serve(listener, state, stop).await {
                tracing::error!(error = %e, "admin API failed");
            }
        });
        Ok(())
    }

    /// Starts the demo upstream on `upstream_demo.listen`.
    pub fn start_demo(&self) -> Result<(), Fatal> {
        let state = self
            .rt
            .block_on(tenantgate_demo::init(&self.settings.demo.store_url))
            .map_err(|e| Fatal::runtime(format!("upstream_demo: {e}")))?;
        let demo = &self.settings.demo;
        let state = if demo.require_assertion {
            tracing::info!(jwks = %demo.assertion_jwks_url, "demo upstream requires a tenant assertion");
            state.with_assertions(tenantgate_demo::AssertionVerifier::new(
                &demo.assertion_jwks_url,
                &self.settings.assertion.issuer,
            ))
        } else {
            state
        };
        let listen = self.settings.demo.listen;
        let listener = self.bind(listen, "upstream_demo.listen")?;
        tracing::info!(listen = %listen, "demo upstream listening");
        let stop = self.stopped();
        self.spawn(async move {
            if let Err(e) = tenantgate_demo::serve(listener, state, stop).await {
                tracing::error!(error = %e, "demo upstream failed");
            }
        });
        Ok(())
    }

    /// Runs the proxy for `routes` until SIGTERM/SIGINT (`ready` is called when
    /// it is about to serve; SIGHUP reads the routes again from `source`), then
    /// stops everything else started here.
    pub fn run_proxy(
        self,
        routes: &[RouteSettings],
        source: Option<tenantgate_proxy::server::RouteSource>,
        ready: impl FnOnce(),
    ) -> Result<(), Fatal> {
        let store = self.store()?;
        tenantgate_proxy::server::run(
            self.rt.handle(),
            &self.settings,
            store,
            routes,
            source,
            &self.shutdown,
            ready,
        )
        .map_err(Fatal::runtime)?;
        self.finish();
        Ok(())
    }

    /// Serves what was started until SIGTERM/SIGINT, then drains it. SIGHUP (the
    /// proxy's certificate reload, often sent to every process of a host) is
    /// logged and ignored: its default action would end the process.
    pub fn wait_for_signal(self) -> Result<(), Fatal> {
        self.rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok();
            let stop = shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => tracing::info!("SIGHUP: nothing to reload in this process"),
                }
            }
        });
        self.finish();
        Ok(())
    }

    /// Stops every piece, waits for them to drain, closes the store.
    fn finish(self) {
        let _ = self.shutdown.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        self.rt.block_on(async {
            for t in tasks {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, t).await;
            }
        });
        self.close();
        self.rt.shutdown_timeout(std::time::Duration::from_secs(2));
    }

    fn close(&self) {
        if let Some(s) = self.store.get() {
            self.rt.block_on(s.close());
        }
    }
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
