//! `tenantgate`: one binary, subcommands `up`, `proxy`, `admin`, `demo-upstream`,
//! `migrate`, `check-config`, `simulate-scaling`, and the admin API's CLI (`tenants`, `keys`,
//! `users`, `policies`, `plans`, `usage`, `explain`, `apply`, `completions`; see `cli`).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tenantgate_core::config::{ConfigError, LogFormat, Settings};

mod alloc;
mod cli;
mod simulate;
mod stack;
mod up;

use stack::Stack;

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
    /// Replay a load trace (CSV `second,rps`) through an autoscaling policy.
    SimulateScaling(simulate::SimulateArgs),
    /// Validate a config file without starting anything.
    CheckConfig {
        /// The file to check.
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// A failure that ends the process: exit code (1: runtime or API error, 2:
/// configuration or usage) and one line.
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

    pub fn usage(message: impl Into<String>) -> Self {
        Fatal {
            code: 2,
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
    let matches = cli::augment(Cli::command()).get_matches();
    let result = match matches.subcommand() {
        Some((name, sub)) if cli::handles(name) => cli::run(name, sub),
        Some(("completions", sub)) => cli::completions(sub, cli::augment(Cli::command())),
        _ => match Cli::from_arg_matches(&matches) {
            Ok(parsed) => run(parsed),
            Err(e) => e.exit(),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tenantgate: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load(path: Option<&Path>) -> Result<Settings, Fatal> {
    Ok(Settings::load(path)?)
}

fn source_name(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

/// Crates whose `info` lines are start-up chatter: shown at `warn` unless
/// `log.level` names them.
const QUIET_CRATES: &[&str] = &[
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_load_balancing",
];

/// The `tracing` filter for `level`, with [`QUIET_CRATES`] at `warn` unless the
/// level mentions them.
fn log_filter(level: &str) -> String {
    let mut filter = level.to_owned();
    if !level.contains("pingora") {
        for c in QUIET_CRATES {
            filter.push_str(&format!(",{c}=warn"));
        }
    }
    filter
}

fn init_logging(cfg: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log_filter(&cfg.log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match cfg.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
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
                cfg.store.backend.as_str()
            );
            Ok(())
        }
        Cmd::Migrate { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            let stack = Stack::new(cfg)?;
            stack.migrate()
        }
        Cmd::Admin { config } => {
            let cfg = load(config.as_deref())?;
            let token = cfg.require_bootstrap_token(&source_name(config.as_deref()))?;
            let token_sha256 = stack::sha256(token.as_bytes());
            init_logging(&cfg);
            let stack = Stack::new(cfg)?;
            stack.start_admin(token_sha256)?;
            stack.wait_for_signal()
        }
        Cmd::DemoUpstream { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            let stack = Stack::new(cfg)?;
            stack.start_demo()?;
            stack.wait_for_signal()
        }
        Cmd::Proxy { config } => {
            let cfg = load(config.as_deref())?;
            init_logging(&cfg);
            if cfg.routes.is_empty() {
                tracing::warn!("no [[routes]] configured: every request will be 404 no_route");
            }
            let routes = cfg.routes.clone();
            let stack = Stack::new(cfg)?;
            let source = route_source(config.as_deref(), |s| s.routes.clone());
            stack.run_proxy(&routes, source, || {})
        }
        Cmd::Up { config } => {
            let cfg = load(config.as_deref())?;
            let source = route_source(config.as_deref(), Settings::routes_or_demo);
            up::run(cfg, source)
        }
        Cmd::SimulateScaling(args) => simulate::run(&args),
    }
}

/// What SIGHUP reads the routes from: the config file again, validated whole
/// (`None` without a file: nothing to read again).
fn route_source(
    path: Option<&Path>,
    pick: fn(&Settings) -> Vec<tenantgate_core::config::RouteSettings>,
) -> Option<tenantgate_proxy::server::RouteSource> {
    let path = path?.to_path_buf();
    Some(Box::new(move || {
        let settings = Settings::load(Some(&path)).map_err(|e| e.to_string())?;
        let routes = pick(&settings);
        Ok((settings, routes))
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_chatter_is_quiet_unless_asked_for() {
        assert_eq!(
            log_filter("info"),
            "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=warn"
        );
        assert_eq!(
            log_filter("pingora_core=info,info"),
            "pingora_core=info,info"
        );
    }

    #[test]
    fn store_urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
