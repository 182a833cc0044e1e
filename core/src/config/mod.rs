//! Configuration: the TOML file ([`file`], its format and defaults) is read into a
//! table, `TENANTGATE__SECTION__KEY` environment overrides are applied on top, and
//! the result is deserialized and turned into validated [`Settings`], the model the
//! rest of the program runs on. Every error names the file and the key in one line.

pub mod file;
mod settings;
#[cfg(test)]
mod tests;

pub use file::{Config, FailMode, RateLimitBackend};
pub use settings::*;

use std::path::Path;

/// Environment variable that overrides `admin.bootstrap_token`.
pub const ADMIN_TOKEN_ENV: &str = "TENANTGATE_ADMIN_TOKEN";
/// Prefix of the generic overrides: `TENANTGATE__STORE__URL=...` sets `store.url`.
pub const ENV_PREFIX: &str = "TENANTGATE__";

/// A config problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error in {source_name}: {key}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub message: String,
}

impl Settings {
    /// Reads `path` (or the built-in defaults when `None`), applies environment
    /// overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    key: "(file)".into(),
                    message: format!("cannot read: {e}"),
                })?;
                Self::from_toml_str(&text, &name, &env)
            }
            None => Self::from_toml_str("", "(built-in defaults)", &env),
        }
    }

    /// Parses TOML text with the given environment (`(name, value)` pairs).
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            err(
                &format!("line {line}"),
                e.message().replace('\n', " ").trim().to_owned(),
            )
        })?;
        for (name, value) in env {
            if name == ADMIN_TOKEN_ENV {
                set_path(
                    &mut table,
                    &["admin", "bootstrap_token"],
                    toml::Value::String(value.clone()),
                );
            } else if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if path.iter().any(|p| p.is_empty()) {
                    continue;
                }
                let parsed = format!("v = {value}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(value.clone()));
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                set_path(&mut table, &refs, parsed);
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                };
                let msg = e.inner().to_string().replace('\n', " ");
                let msg = msg.trim();
                // toml repeats the key at the end; it is already in front.
                let msg = msg
                    .strip_suffix(&format!("in `{key}`"))
                    .map(str::trim_end)
                    .unwrap_or(msg);
                err(&key, msg.to_owned())
            })?;
        Settings::try_from(&config).map_err(|(key, message)| err(&key, message))
    }

    /// The bootstrap token, required by `tenantgate admin`.
    pub fn require_bootstrap_token(&self, source_name: &str) -> Result<&str, ConfigError> {
        self.admin
            .bootstrap_token
            .as_deref()
            .ok_or_else(|| ConfigError {
                source_name: source_name.to_owned(),
                key: "admin.bootstrap_token".into(),
                message: format!("required (or set {ADMIN_TOKEN_ENV})"),
            })
    }
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
    cur.insert((*last).to_owned(), value);
}
