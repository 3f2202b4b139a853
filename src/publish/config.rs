//! The configuration `publish` loads: the worker's own file and `WXD_*` settings, with every
//! secret left unread.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Env, ProcessEnv};

/// Stands in for every secret when the publisher loads the configuration; it is never sent.
pub(super) const PLACEHOLDER_SECRET: &str = "unused-by-publish";

/// Loads the worker's configuration (file and `WXD_*` settings) without reading any secret:
/// publishing needs the broker, the queue names and the account list, never a credential.
pub fn load_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    let env = ProcessEnv;
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| env.var("WXD_CONFIG").map(PathBuf::from));
    let text =
        match &path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", p.display()))
            })?),
            None => None,
        };
    config_without_secrets(text.as_deref(), &env)
}

/// [`load_config`] from given sources: `[[accounts]]` lose their `secret_env`/`secret_file`,
/// and every secret variable reads as a placeholder, so no secret is ever read.
pub(super) fn config_without_secrets(
    toml_text: Option<&str>,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    let text = match toml_text.map(|t| (t, t.parse::<toml::Table>())) {
        Some((_, Ok(mut table))) => {
            if let Some(toml::Value::Array(accounts)) = table.get_mut("accounts") {
                for a in accounts.iter_mut().filter_map(toml::Value::as_table_mut) {
                    a.remove("secret_env");
                    a.remove("secret_file");
                }
            }
            Some(toml::to_string(&table).map_err(|e| ConfigError(e.to_string()))?)
        }
        // Let the real loader report the syntax error.
        Some((t, Err(_))) => Some(t.to_string()),
        None => None,
    };
    Config::from_sources(text.as_deref(), &NoSecrets(env))
}

/// An environment in which every secret is a placeholder and the callback is not configured.
/// (`Config::from_sources` only looks variables up by name for secrets.)
struct NoSecrets<'a>(&'a dyn Env);

impl Env for NoSecrets<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if name.starts_with("WXD_CALLBACK_") {
            None
        } else if name == "WXD_SECRET" || name.starts_with("WXD_SECRET_") {
            Some(PLACEHOLDER_SECRET.into())
        } else {
            self.0.var(name)
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.0.vars()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_config_loads_without_any_secret_and_keeps_the_accounts() {
        let toml = r#"
            [[accounts]]
            appid = "wxa0000000000001"
            secret_file = "/nonexistent/secret"
            [[accounts]]
            appid = "wxb0000000000002"
            secret_env = "UNSET_VARIABLE"
        "#;
        let e = BTreeMap::from([
            ("WXD_APPID".to_string(), "wxc0000000000003".to_string()),
            ("WXD_JOBS_QUEUE".to_string(), "q".to_string()),
        ]);
        let c = config_without_secrets(Some(toml), &e).unwrap();
        let ids: Vec<&str> = c.accounts.iter().map(|a| a.appid.as_str()).collect();
        assert_eq!(
            ids,
            ["wxc0000000000003", "wxa0000000000001", "wxb0000000000002"]
        );
        assert!(
            c.accounts
                .iter()
                .all(|a| a.secret.expose() == PLACEHOLDER_SECRET)
        );
        assert_eq!(c.jobs_queue, "q");
        // Unknown keys are still refused, like the worker does.
        let typo = BTreeMap::from([("WXD_JOBS_QUEUEE".to_string(), "q".to_string())]);
        assert!(config_without_secrets(None, &typo).is_err());
    }
}
