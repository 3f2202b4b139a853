//! The loader: the file and the environment merged, every key of the table applied (its
//! value or its default), the accounts built, then the rules that span keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

use super::describe::nearest;
use super::env::{Env, ProcessEnv};
use super::secrets::{SecretSource, account_secret, read_secret_file, secret_from_env};
use super::settings::{Draft, SETTINGS, Setting, Source, by_env, by_key};
use super::value::one_line;
use super::{Account, Config, ConfigError, TokenMode, err};

/// Whether a load reads the secrets ([`Credentials`]) and requires one per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Required,
    Skipped,
}

/// An `[[accounts]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    appid: String,
    /// Name of an environment variable holding the secret.
    secret_env: Option<String>,
    /// Path of a file holding the secret (a mounted Kubernetes Secret).
    secret_file: Option<PathBuf>,
    rate_per_sec: Option<u32>,
    daily_quota: Option<u64>,
    /// The account's original id (`gh_…`), to attribute plaintext-mode receipts.
    original_id: Option<String>,
    /// The RabbitMQ users that may send as it.
    publishers: Option<Vec<String>>,
}

/// The keys of an `[[accounts]]` entry, for the nearest-key hint (serde only lists them).
const ACCOUNT_KEYS: &[&str] = &[
    "appid",
    "secret_env",
    "secret_file",
    "rate_per_sec",
    "daily_quota",
    "original_id",
    "publishers",
];

/// The file's keys that are not settings of their own.
const ACCOUNTS: &str = "accounts";
/// The nodes of a cluster as a list in the file (`amqp_url` and `WXD_AMQP_URL` win over it).
const AMQP_URLS: &str = "amqp_urls";

impl Config {
    /// Loads from an optional TOML file (else `WXD_CONFIG`) and the process environment, with
    /// every account's AppSecret and the callback secrets.
    pub(crate) fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(file, Secrets::Required)
    }

    /// Loads the settings and accounts only: no secret is read or required, and
    /// [`Config::credentials`] is empty. For tools that never call WeChat (`publish`).
    pub(crate) fn load_without_credentials(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(file, Secrets::Skipped)
    }

    fn load_with(file: Option<&Path>, secrets: Secrets) -> Result<Config, ConfigError> {
        let env = ProcessEnv;
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| env.var("WXD_CONFIG").map(PathBuf::from));
        let text = match &path {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| err(format!("cannot read config file {}: {e}", p.display())))?,
            ),
            None => None,
        };
        build(text.as_deref(), &env, secrets)
    }

    /// Builds a configuration from TOML text and an environment.
    pub fn from_sources(toml_text: Option<&str>, env: &dyn Env) -> Result<Config, ConfigError> {
        build(toml_text, env, Secrets::Required)
    }

    /// [`Config::from_sources`] without reading or requiring any secret.
    pub fn without_credentials(
        toml_text: Option<&str>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        build(toml_text, env, Secrets::Skipped)
    }
}

fn build(toml_text: Option<&str>, env: &dyn Env, secrets: Secrets) -> Result<Config, ConfigError> {
    let mut file: toml::Table = match toml_text {
        Some(t) => toml::from_str(t).map_err(|e| err(one_line(&e.to_string())))?,
        None => toml::Table::new(),
    };
    let raw_accounts = file.remove(ACCOUNTS);
    let amqp_urls = file.remove(AMQP_URLS);
    let mut values = file_values(file)?;
    if let Some(list) = amqp_urls
        && !values.contains_key("amqp_url")
    {
        values.insert("amqp_url", Value::String(url_list(list)?));
    }
    values.extend(env_values(env)?);
    values.extend(mounted_values(env)?);
    let required = secrets == Secrets::Required;
    if required {
        values.extend(secret_values(env)?);
    }
    let mut draft = Draft::blank();
    for s in SETTINGS {
        let Some(v) = values.remove(s.key).or_else(|| s.default.value()) else {
            continue;
        };
        (s.apply)(&mut draft, v).map_err(|e| err(format!("{}: {e}", s.name())))?;
    }
    build_accounts(&mut draft, accounts(raw_accounts)?, env, required)?;
    check_across(&draft.config)?;
    Ok(draft.config)
}

/// The file's settings; a secret or an unknown key is an error.
fn file_values(file: toml::Table) -> Result<BTreeMap<&'static str, Value>, ConfigError> {
    let mut values = BTreeMap::new();
    for (key, value) in file {
        match by_key(&key) {
            Some(s) if s.source == Source::Secret => {
                let also = if key == "secret" {
                    ", or secret_env / secret_file in [[accounts]]"
                } else {
                    ""
                };
                return Err(err(format!(
                    "key `{key}`: secrets may not be written in the config file; use {0} / \
                     {0}_FILE{also}",
                    s.env()
                )));
            }
            Some(s) => {
                values.insert(s.key, value);
            }
            None => {
                let known = SETTINGS
                    .iter()
                    .filter(|s| s.source != Source::Secret)
                    .map(|s| s.key)
                    .chain([ACCOUNTS, AMQP_URLS]);
                let hint = did_you_mean(nearest(&key, known), "`");
                return Err(err(format!("unknown key `{key}` in the file{hint}")));
            }
        }
    }
    Ok(values)
}

fn url_list(list: Value) -> Result<String, ConfigError> {
    let bad = || err("amqp_urls: expected a list of amqp:// or amqps:// URLs");
    let Value::Array(items) = list else {
        return Err(bad());
    };
    let urls = items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(urls.join(","))
}

/// The `WXD_<KEY>` variables, typed by their key's kind. Secrets and `_FILE` variants are
/// read apart; an unknown `WXD_` variable is an error.
fn env_values(env: &dyn Env) -> Result<Vec<(&'static str, Value)>, ConfigError> {
    let mut vars = env.vars();
    vars.sort();
    let mut values = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("WXD_") else {
            continue;
        };
        if name == "WXD_CONFIG" {
            continue;
        }
        if let Some(base) = name.strip_suffix("_FILE")
            && by_env(base).is_some_and(|s| s.source != Source::File)
        {
            continue;
        }
        match by_env(&name) {
            Some(s) if s.source == Source::Secret => {}
            Some(s) => values.push((s.key, s.kind.read_env(value))),
            // Convention: WXD_SECRET_<APPID> holds an [[accounts]] entry's AppSecret.
            None if name.starts_with("WXD_SECRET_") => {}
            None => {
                let hint = did_you_mean(nearest(&name, SETTINGS.iter().map(Setting::env)), "");
                return Err(err(format!(
                    "unknown setting {name} (no such key `{}`){hint}",
                    rest.to_ascii_lowercase()
                )));
            }
        }
    }
    Ok(values)
}

/// "; did you mean `key`?" for a hint, `quote` around it; nothing without one.
fn did_you_mean(hint: Option<impl std::fmt::Display>, quote: &str) -> String {
    hint.map_or_else(String::new, |k| {
        format!("; did you mean {quote}{k}{quote}?")
    })
}

/// Keys that may come from a mounted file (`WXD_<KEY>_FILE`), such as a URL with a password.
fn mounted_values(env: &dyn Env) -> Result<Vec<(&'static str, Value)>, ConfigError> {
    let mut values = Vec::new();
    for s in SETTINGS.iter().filter(|s| s.source == Source::Mounted) {
        let var = s.env();
        let file_var = format!("{var}_FILE");
        let Some(path) = env.var(&file_var) else {
            continue;
        };
        if env.var(&var).is_some() {
            return Err(err(format!("{var} and {file_var}: set one, not both")));
        }
        let value = read_secret_file(Path::new(&path), &file_var)?;
        values.push((s.key, Value::String(value.expose().to_string())));
    }
    Ok(values)
}

/// The secrets of the table, from `WXD_<KEY>` or `WXD_<KEY>_FILE`.
fn secret_values(env: &dyn Env) -> Result<Vec<(&'static str, Value)>, ConfigError> {
    let mut values = Vec::new();
    for s in SETTINGS.iter().filter(|s| s.source == Source::Secret) {
        if let Some(secret) = secret_from_env(env, &s.env())? {
            values.push((s.key, Value::String(secret.expose().to_string())));
        }
    }
    Ok(values)
}

/// The `[[accounts]]` entries, with the nearest key named for a misspelt one.
fn accounts(raw: Option<Value>) -> Result<Vec<RawAccount>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if let Value::Array(entries) = &raw {
        for (i, entry) in entries.iter().enumerate() {
            let Value::Table(t) = entry else { continue };
            if let Some(key) = t.keys().find(|k| !ACCOUNT_KEYS.contains(&k.as_str())) {
                let hint = did_you_mean(nearest(key, ACCOUNT_KEYS.iter()), "`");
                return Err(err(format!("accounts[{i}]: unknown key `{key}`{hint}")));
            }
        }
    }
    Vec::<RawAccount>::deserialize(raw)
        .map_err(|e| err(format!("accounts: {}", one_line(&e.to_string()))))
}

/// The single account of the top-level keys, then the `[[accounts]]` entries, each with its
/// AppSecret when the secrets are required.
fn build_accounts(
    draft: &mut Draft,
    raw: Vec<RawAccount>,
    env: &dyn Env,
    required: bool,
) -> Result<(), ConfigError> {
    let Draft { config, single } = draft;
    let (accounts, credentials) = (&mut config.accounts, &mut config.credentials);
    if let Some(appid) = &single.appid {
        if required {
            let secret = single
                .secret
                .clone()
                .ok_or_else(|| err("WXD_SECRET: missing (or set WXD_SECRET_FILE) for WXD_APPID"))?;
            credentials.set_app_secret(appid, secret);
        }
        accounts.push(Account {
            appid: appid.clone(),
            rate_per_sec: single.rate_per_sec,
            daily_quota: single.daily_quota,
            original_id: single.original_id.clone(),
            publishers: single.publishers.clone(),
        });
    }
    for (i, a) in raw.into_iter().enumerate() {
        if required {
            let source = SecretSource {
                appid: &a.appid,
                env_var: a.secret_env.as_deref(),
                file: a.secret_file.as_deref(),
            };
            let secret = account_secret(&source, &format!("accounts[{i}] ({})", a.appid), env)?;
            credentials.set_app_secret(&a.appid, secret);
        }
        accounts.push(Account {
            appid: a.appid,
            rate_per_sec: a.rate_per_sec.unwrap_or(single.rate_per_sec),
            daily_quota: a.daily_quota,
            original_id: a.original_id,
            publishers: a.publishers,
        });
    }
    for (i, a) in accounts.iter().enumerate() {
        if !valid_appid(&a.appid) {
            return Err(err(format!("appid {:?}: not a valid appid", a.appid)));
        }
        if required
            && credentials
                .app_secret(&a.appid)
                .is_none_or(|s| s.expose().is_empty())
        {
            return Err(err(format!("secret for {}: empty", a.appid)));
        }
        if a.rate_per_sec == 0 {
            return Err(err(format!(
                "rate_per_sec for {}: must be at least 1",
                a.appid
            )));
        }
        if let Some(list) = &a.publishers
            && let Err(e) = super::value::check_publishers(list)
        {
            return Err(err(format!("publishers of {}: {e}", a.appid)));
        }
        if accounts[..i].iter().any(|b| b.appid == a.appid) {
            return Err(err(format!("appid {}: configured twice", a.appid)));
        }
        if let Some(gh) = &a.original_id {
            if !valid_appid(gh) {
                return Err(err(format!(
                    "original_id of {}: not an original id (gh_…): {gh:?}",
                    a.appid
                )));
            }
            if accounts[..i]
                .iter()
                .any(|b| b.original_id.as_deref() == Some(gh))
            {
                return Err(err(format!(
                    "original_id {gh}: declared by two accounts; receipts could not be told apart"
                )));
            }
        }
    }
    Ok(())
}

/// The paths the main listener serves itself; the callback may not take one of them there.
const BUILT_IN_PATHS: &[&str] = &["/metrics", "/healthz", "/readyz"];

/// The rules that span keys.
fn check_across(c: &Config) -> Result<(), ConfigError> {
    if let Some(addr) = &c.callback.addr
        // Port 0 (any free port, in tests) on both is two listeners, not a clash.
        && *addr == c.http_addr
        && !addr.ends_with(":0")
    {
        return Err(err(
            "callback_addr (WXD_CALLBACK_ADDR): must differ from WXD_HTTP_ADDR \
             (leave it unset to serve the callback on WXD_HTTP_ADDR)",
        ));
    }
    if c.callback.addr.is_none() && BUILT_IN_PATHS.contains(&c.callback.path.as_str()) {
        return Err(err(format!(
            "callback_path (WXD_CALLBACK_PATH): {} is served on WXD_HTTP_ADDR already; \
             expected another path, or the callback on its own listener (WXD_CALLBACK_ADDR)",
            c.callback.path
        )));
    }
    if c.wechat.token_mode == TokenMode::Classic
        && c.limits.expected_replicas > 1
        && c.limits.redis_url.is_none()
    {
        // Every classic fetch invalidates the previous token after 5 minutes, so replicas
        // that fetch on their own keep killing each other's tokens.
        return Err(err(
            "token_mode: classic with expected_replicas > 1 needs redis_url, so that the \
             replicas share one token; use token_mode = \"stable\" (the default) or set \
             WXD_REDIS_URL",
        ));
    }
    Ok(())
}

/// WeChat appids are `wx` followed by 16 hex digits; accept any short ASCII word so that test
/// accounts work, but refuse anything that could break a header, a label or a log line.
fn valid_appid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint list names exactly the fields serde accepts in an `[[accounts]]` entry.
    #[test]
    fn account_keys_match_the_entry() {
        let e = toml::from_str::<RawAccount>("no_such_key = 1").unwrap_err();
        let msg = e.to_string();
        let listed = msg
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("{msg}"));
        let listed: Vec<&str> = listed
            .split(',')
            .map(|k| k.trim().trim_matches('`'))
            .filter(|k| !k.is_empty())
            .collect();
        assert_eq!(listed, ACCOUNT_KEYS, "{msg}");
    }
}
