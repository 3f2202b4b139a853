//! Configuration: a TOML file plus `WXD_*` environment overrides.
//!
//! Every key of the file can be overridden by an environment variable named `WXD_<KEY>` (upper
//! case). Unknown keys, in the file or in the environment, are errors: a typo in a deployment
//! should stop the pod at start, not silently fall back to a default.
//!
//! Secrets (an account's AppSecret, the callback token and AES key) come only from the
//! environment or from a file path. They are wrapped in [`Secret`], whose `Debug` never prints
//! the value, so they cannot reach a log line by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A secret string. `Debug` prints `Secret(***)`; there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value. Only config loading and tests should need this.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it (the token request, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How access tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token`: every caller gets the same token, so replicas never
    /// invalidate each other. The default.
    Stable,
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token after a 5-minute overlap.
    Classic,
}

/// The RabbitMQ queue type of the jobs queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, with a delivery limit that dead-letters poison jobs. The default.
    Quorum,
    /// A classic queue, for brokers or setups without quorum queues.
    Classic,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// One WeChat Official Account the worker sends for.
#[derive(Debug, Clone)]
pub struct Account {
    pub appid: String,
    pub secret: Secret,
    /// Sends per second for this account (across the process, or across all replicas with Redis).
    pub rate_per_sec: u32,
    /// Successful sends allowed per Beijing day; the account pauses before it would pass it.
    pub daily_quota: Option<u64>,
    /// The account's original id (`gh_…`), which WeChat puts in a push's `ToUserName`. With
    /// several accounts a plaintext-mode receipt carries nothing else that names its account.
    pub original_id: Option<String>,
}

/// The validated configuration the worker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: String,
    pub jobs_queue: String,
    pub jobs_queue_type: QueueType,
    pub outcomes_exchange: String,
    pub outcomes_queue: String,
    pub dead_queue: String,
    pub api_base: String,
    pub accounts: Vec<Account>,
    pub token_mode: TokenMode,
    pub http_addr: String,
    pub callback_token: Option<Secret>,
    pub callback_aes_key: Option<Secret>,
    pub callback_path: String,
    pub callback_max_age_secs: u64,
    pub concurrency: usize,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_delay_secs: u64,
    pub retry_budget_secs: u64,
    pub inline_retry_max_ms: u64,
    pub http_timeout_ms: u64,
    pub quota_probe_secs: u64,
    pub account_stop_probe_secs: u64,
    pub drain_timeout_secs: u64,
    pub delivery_limit: u32,
    pub max_job_bytes: usize,
    pub redis_url: Option<String>,
    pub expected_replicas: u32,
    pub log_format: LogFormat,
    pub topology: Topology,
}

/// Who owns the queues and the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// The worker declares everything at start-up (needs the `configure` permission). The
    /// default.
    Declare,
    /// The platform declares them (and sets their arguments with policies); the worker only
    /// checks that they exist, so it needs no `configure` permission.
    Passive,
}

/// A configuration error: one line that names the key at fault and never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The kind of value a key holds, so that environment strings can be typed before the file
/// and the environment are merged.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
}

/// Every top-level key and its kind. Environment variables `WXD_<KEY>` map onto these.
const KEYS: &[(&str, Kind)] = &[
    ("amqp_url", Kind::Str),
    ("jobs_queue", Kind::Str),
    ("jobs_queue_type", Kind::Str),
    ("outcomes_exchange", Kind::Str),
    ("outcomes_queue", Kind::Str),
    ("dead_queue", Kind::Str),
    ("api_base", Kind::Str),
    ("appid", Kind::Str),
    ("token_mode", Kind::Str),
    ("rate_per_sec", Kind::Int),
    ("daily_quota", Kind::Int),
    ("http_addr", Kind::Str),
    ("callback_path", Kind::Str),
    ("callback_max_age_secs", Kind::Int),
    ("concurrency", Kind::Int),
    ("prefetch", Kind::Int),
    ("max_attempts", Kind::Int),
    ("retry_base_ms", Kind::Int),
    ("retry_max_delay_secs", Kind::Int),
    ("retry_budget_secs", Kind::Int),
    ("inline_retry_max_ms", Kind::Int),
    ("http_timeout_ms", Kind::Int),
    ("quota_probe_secs", Kind::Int),
    ("account_stop_probe_secs", Kind::Int),
    ("drain_timeout_secs", Kind::Int),
    ("delivery_limit", Kind::Int),
    ("max_job_bytes", Kind::Int),
    ("redis_url", Kind::Str),
    ("expected_replicas", Kind::Int),
    ("log_format", Kind::Str),
    ("topology", Kind::Str),
    ("original_id", Kind::Str),
];

/// Environment variables that are secrets or meta settings rather than file keys.
const SECRET_ENV: &[&str] = &[
    "WXD_CONFIG",
    "WXD_SECRET",
    "WXD_SECRET_FILE",
    "WXD_CALLBACK_TOKEN",
    "WXD_CALLBACK_TOKEN_FILE",
    "WXD_CALLBACK_AES_KEY",
    "WXD_CALLBACK_AES_KEY_FILE",
];

#[derive(Debug, Deserialize, Default)]
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    amqp_url: Option<String>,
    jobs_queue: Option<String>,
    jobs_queue_type: Option<QueueType>,
    outcomes_exchange: Option<String>,
    outcomes_queue: Option<String>,
    dead_queue: Option<String>,
    api_base: Option<String>,
    appid: Option<String>,
    token_mode: Option<TokenMode>,
    rate_per_sec: Option<u32>,
    daily_quota: Option<u64>,
    http_addr: Option<String>,
    callback_path: Option<String>,
    callback_max_age_secs: Option<u64>,
    concurrency: Option<usize>,
    prefetch: Option<u16>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_delay_secs: Option<u64>,
    retry_budget_secs: Option<u64>,
    inline_retry_max_ms: Option<u64>,
    http_timeout_ms: Option<u64>,
    quota_probe_secs: Option<u64>,
    account_stop_probe_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    delivery_limit: Option<u32>,
    max_job_bytes: Option<usize>,
    redis_url: Option<String>,
    expected_replicas: Option<u32>,
    log_format: Option<LogFormat>,
    topology: Option<Topology>,
    original_id: Option<String>,
    #[serde(default)]
    accounts: Vec<RawAccount>,
}

/// Where configuration values come from. Tests build one from a map instead of the process
/// environment, so they never race on `std::env`.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Config {
    /// Loads from an optional TOML file (else `WXD_CONFIG`) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
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
        Config::from_sources(text.as_deref(), &env)
    }

    /// Builds a configuration from TOML text and an environment.
    pub fn from_sources(toml_text: Option<&str>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| err(one_line(&e.to_string())))?,
            None => toml::Table::new(),
        };
        if table.contains_key("secret") {
            return Err(err(
                "key `secret`: secrets may not be written in the config file; \
                 use WXD_SECRET / WXD_SECRET_FILE, or secret_env / secret_file in [[accounts]]",
            ));
        }
        for (name, value) in env.vars() {
            let Some(key) = name.strip_prefix("WXD_") else {
                continue;
            };
            if SECRET_ENV.contains(&name.as_str()) || name.starts_with("WXD_SECRET_") {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let Some((_, kind)) = KEYS.iter().find(|(k, _)| *k == key) else {
                return Err(err(format!("unknown setting {name} (no such key `{key}`)")));
            };
            let v =
                match kind {
                    Kind::Str => toml::Value::String(value),
                    Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| {
                        err(format!("{name}: expected a whole number, got {value:?}"))
                    })?),
                };
            table.insert(key, v);
        }
        let raw: Raw = Raw::deserialize(toml::Value::Table(table))
            .map_err(|e| err(one_line(&e.to_string())))?;
        Config::from_raw(raw, env)
    }

    fn from_raw(raw: Raw, env: &dyn Env) -> Result<Config, ConfigError> {
        let default_rate = raw.rate_per_sec.unwrap_or(50);
        let mut accounts = Vec::new();
        if let Some(appid) = raw.appid.clone() {
            let secret = secret_from_env(env, "WXD_SECRET")?
                .ok_or_else(|| err("WXD_SECRET: missing (or set WXD_SECRET_FILE) for WXD_APPID"))?;
            accounts.push(Account {
                appid,
                secret,
                rate_per_sec: default_rate,
                daily_quota: raw.daily_quota,
                original_id: raw.original_id.clone(),
            });
        }
        for (i, a) in raw.accounts.into_iter().enumerate() {
            let key = format!("accounts[{i}] ({})", a.appid);
            let secret = match (&a.secret_env, &a.secret_file) {
                (Some(var), None) => env
                    .var(var)
                    .map(Secret::new)
                    .ok_or_else(|| err(format!("{key}.secret_env: variable {var} is not set")))?,
                (None, Some(path)) => read_secret_file(path, &format!("{key}.secret_file"))?,
                (None, None) => {
                    // Convention: WXD_SECRET_<APPID>, so a Kubernetes Secret can hold them all.
                    let var = format!("WXD_SECRET_{}", a.appid.to_ascii_uppercase());
                    secret_from_env(env, &var)?.ok_or_else(|| {
                        err(format!(
                            "{key}: no secret; set secret_env, secret_file or {var}"
                        ))
                    })?
                }
                (Some(_), Some(_)) => {
                    return Err(err(format!(
                        "{key}: set secret_env or secret_file, not both"
                    )));
                }
            };
            accounts.push(Account {
                appid: a.appid,
                secret,
                rate_per_sec: a.rate_per_sec.unwrap_or(default_rate),
                daily_quota: a.daily_quota,
                original_id: a.original_id,
            });
        }
        for (i, a) in accounts.iter().enumerate() {
            if !valid_appid(&a.appid) {
                return Err(err(format!("appid {:?}: not a valid appid", a.appid)));
            }
            if a.secret.expose().is_empty() {
                return Err(err(format!("secret for {}: empty", a.appid)));
            }
            if a.rate_per_sec == 0 {
                return Err(err(format!(
                    "rate_per_sec for {}: must be at least 1",
                    a.appid
                )));
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

        let amqp_url = raw
            .amqp_url
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(err(
                "amqp_url (WXD_AMQP_URL): must start with amqp:// or amqps://",
            ));
        }
        let api_base = raw
            .api_base
            .unwrap_or_else(|| "https://api.weixin.qq.com".into())
            .trim_end_matches('/')
            .to_string();
        if reqwest::Url::parse(&api_base).is_err()
            || !(api_base.starts_with("http://") || api_base.starts_with("https://"))
        {
            return Err(err(format!(
                "api_base (WXD_API_BASE): not an http(s) URL: {api_base:?}"
            )));
        }
        let http_addr = raw.http_addr.unwrap_or_else(|| "0.0.0.0:9090".into());
        if http_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(format!(
                "http_addr (WXD_HTTP_ADDR): not host:port: {http_addr:?}"
            )));
        }
        let callback_path = raw
            .callback_path
            .unwrap_or_else(|| "/wechat/callback".into());
        if !callback_path.starts_with('/') {
            return Err(err("callback_path (WXD_CALLBACK_PATH): must start with /"));
        }
        if let Some(url) = &raw.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(err(
                "redis_url (WXD_REDIS_URL): must start with redis:// or rediss://",
            ));
        }
        let concurrency = raw.concurrency.unwrap_or(64);
        if concurrency == 0 {
            return Err(err("concurrency (WXD_CONCURRENCY): must be at least 1"));
        }
        let prefetch = raw.prefetch.unwrap_or(128);
        if prefetch == 0 {
            return Err(err("prefetch (WXD_PREFETCH): must be at least 1"));
        }
        let max_attempts = raw.max_attempts.unwrap_or(6);
        if max_attempts == 0 {
            return Err(err("max_attempts (WXD_MAX_ATTEMPTS): must be at least 1"));
        }
        let callback_token = secret_from_env(env, "WXD_CALLBACK_TOKEN")?;
        let callback_aes_key = secret_from_env(env, "WXD_CALLBACK_AES_KEY")?;
        if let Some(k) = &callback_aes_key
            && k.expose().len() != 43
        {
            return Err(err(
                "WXD_CALLBACK_AES_KEY: an EncodingAESKey has 43 characters",
            ));
        }
        let log_format = raw.log_format.unwrap_or_else(|| {
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                LogFormat::Text
            } else {
                LogFormat::Json
            }
        });
        for (name, v) in [
            ("jobs_queue", &raw.jobs_queue),
            ("outcomes_exchange", &raw.outcomes_exchange),
            ("outcomes_queue", &raw.outcomes_queue),
            ("dead_queue", &raw.dead_queue),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 200)
            {
                return Err(err(format!("{name}: must be 1 to 200 characters")));
            }
        }
        Ok(Config {
            amqp_url,
            jobs_queue: raw.jobs_queue.unwrap_or_else(|| "wxdispatch.jobs".into()),
            jobs_queue_type: raw.jobs_queue_type.unwrap_or(QueueType::Quorum),
            outcomes_exchange: raw
                .outcomes_exchange
                .unwrap_or_else(|| "wxdispatch.outcomes".into()),
            outcomes_queue: raw
                .outcomes_queue
                .unwrap_or_else(|| "wxdispatch.outcomes".into()),
            dead_queue: raw.dead_queue.unwrap_or_else(|| "wxdispatch.dead".into()),
            api_base,
            accounts,
            token_mode: raw.token_mode.unwrap_or(TokenMode::Stable),
            http_addr,
            callback_token,
            callback_aes_key,
            callback_path,
            callback_max_age_secs: raw.callback_max_age_secs.unwrap_or(300),
            concurrency,
            prefetch,
            max_attempts,
            retry_base_ms: raw.retry_base_ms.unwrap_or(200),
            retry_max_delay_secs: raw.retry_max_delay_secs.unwrap_or(60),
            retry_budget_secs: raw.retry_budget_secs.unwrap_or(540),
            inline_retry_max_ms: raw.inline_retry_max_ms.unwrap_or(3000),
            http_timeout_ms: raw.http_timeout_ms.unwrap_or(5000),
            quota_probe_secs: raw.quota_probe_secs.unwrap_or(600),
            account_stop_probe_secs: raw.account_stop_probe_secs.unwrap_or(300),
            drain_timeout_secs: raw.drain_timeout_secs.unwrap_or(30),
            delivery_limit: raw.delivery_limit.unwrap_or(5),
            max_job_bytes: raw.max_job_bytes.unwrap_or(256 * 1024),
            redis_url: raw.redis_url,
            expected_replicas: raw.expected_replicas.unwrap_or(1).max(1),
            log_format,
            topology: raw.topology.unwrap_or(Topology::Declare),
        })
    }

    /// The account a job names, or the only account when the job names none.
    pub fn account(&self, appid: Option<&str>) -> Option<&Account> {
        match appid {
            Some(id) => self.accounts.iter().find(|a| a.appid == id),
            None if self.accounts.len() == 1 => self.accounts.first(),
            None => None,
        }
    }

    /// The drain timeout as a `Duration`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// A secret from `NAME` or from the file named by `NAME_FILE`.
fn secret_from_env(env: &dyn Env, name: &str) -> Result<Option<Secret>, ConfigError> {
    if let Some(v) = env.var(name) {
        return Ok(Some(Secret::new(v.trim())));
    }
    match env.var(&format!("{name}_FILE")) {
        Some(path) => read_secret_file(Path::new(&path), &format!("{name}_FILE")).map(Some),
        None => Ok(None),
    }
}

fn read_secret_file(path: &Path, key: &str) -> Result<Secret, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim()))
        .map_err(|e| {
            err(format!(
                "{key}: cannot read {}: {}",
                path.display(),
                e.kind()
            ))
        })
}

/// WeChat appids are `wx` followed by 16 hex digits; accept any short ASCII word so that test
/// accounts work, but refuse anything that could break a header, a label or a log line.
fn valid_appid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.jobs_queue, "wxdispatch.jobs");
        assert_eq!(c.outcomes_exchange, "wxdispatch.outcomes");
        assert_eq!(c.outcomes_queue, "wxdispatch.outcomes");
        assert_eq!(c.dead_queue, "wxdispatch.dead");
        assert_eq!(c.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.token_mode, TokenMode::Stable);
        assert_eq!(c.http_addr, "0.0.0.0:9090");
        assert_eq!(c.callback_path, "/wechat/callback");
        assert_eq!(c.quota_probe_secs, 600);
        assert_eq!(c.jobs_queue_type, QueueType::Quorum);
    }

    #[test]
    fn env_overrides_file_and_single_account_comes_from_env() {
        let toml = "jobs_queue = \"from-file\"\nconcurrency = 8\n";
        let e = env(&[
            ("WXD_JOBS_QUEUE", "from-env"),
            ("WXD_APPID", "wx0123456789abcdef"),
            ("WXD_SECRET", "s3cret"),
            ("WXD_RATE_PER_SEC", "200"),
        ]);
        let c = Config::from_sources(Some(toml), &e).unwrap();
        assert_eq!(c.jobs_queue, "from-env");
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.accounts.len(), 1);
        assert_eq!(c.accounts[0].rate_per_sec, 200);
        assert_eq!(c.accounts[0].secret.expose(), "s3cret");
    }

    #[test]
    fn several_accounts_come_from_the_file_with_secrets_from_env() {
        let toml = r#"
            [[accounts]]
            appid = "wxaaaa"
            secret_env = "SECRET_A"
            rate_per_sec = 10
            [[accounts]]
            appid = "wxbbbb"
            daily_quota = 500
        "#;
        let e = env(&[("SECRET_A", "a"), ("WXD_SECRET_WXBBBB", "b")]);
        let c = Config::from_sources(Some(toml), &e).unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.accounts[0].rate_per_sec, 10);
        assert_eq!(c.accounts[1].daily_quota, Some(500));
        assert_eq!(c.account(Some("wxbbbb")).unwrap().secret.expose(), "b");
        assert!(c.account(None).is_none(), "no default with two accounts");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_sources(Some("concurrencyy = 3"), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("concurrencyy"), "{e}");
        let e = Config::from_sources(None, &env(&[("WXD_PREFECTH", "3")])).unwrap_err();
        assert!(e.to_string().contains("WXD_PREFECTH"), "{e}");
    }

    #[test]
    fn missing_secret_is_named_and_bad_urls_are_refused() {
        let e = Config::from_sources(None, &env(&[("WXD_APPID", "wx1")])).unwrap_err();
        assert!(e.to_string().contains("WXD_SECRET"), "{e}");
        let e = Config::from_sources(None, &env(&[("WXD_AMQP_URL", "http://x")])).unwrap_err();
        assert!(e.to_string().contains("WXD_AMQP_URL"), "{e}");
        let e = Config::from_sources(None, &env(&[("WXD_API_BASE", "not a url")])).unwrap_err();
        assert!(e.to_string().contains("WXD_API_BASE"), "{e}");
        let e = Config::from_sources(None, &env(&[("WXD_CONCURRENCY", "many")])).unwrap_err();
        assert!(e.to_string().contains("WXD_CONCURRENCY"), "{e}");
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let e = env(&[("WXD_APPID", "wx1"), ("WXD_SECRET", "hunter2-very-secret")]);
        let c = Config::from_sources(None, &e).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = env(&[
            ("WXD_APPID", "bad appid!"),
            ("WXD_SECRET", "hunter2-very-secret"),
        ]);
        let msg = Config::from_sources(None, &e).unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn original_ids_and_topology_are_read_and_checked() {
        let toml = r#"
            topology = "passive"
            [[accounts]]
            appid = "wxaaaa"
            original_id = "gh_aaaa"
            [[accounts]]
            appid = "wxbbbb"
        "#;
        let e = env(&[("WXD_SECRET_WXAAAA", "a"), ("WXD_SECRET_WXBBBB", "b")]);
        let c = Config::from_sources(Some(toml), &e).unwrap();
        assert_eq!(c.accounts[0].original_id.as_deref(), Some("gh_aaaa"));
        assert_eq!(c.accounts[1].original_id, None);
        assert_eq!(c.topology, Topology::Passive);
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(c.topology, Topology::Declare, "the default");
        let single = env(&[
            ("WXD_APPID", "wxaaaa"),
            ("WXD_SECRET", "a"),
            ("WXD_ORIGINAL_ID", "gh_single"),
            ("WXD_TOPOLOGY", "passive"),
        ]);
        let c = Config::from_sources(None, &single).unwrap();
        assert_eq!(c.accounts[0].original_id.as_deref(), Some("gh_single"));
        assert_eq!(c.topology, Topology::Passive);
        let twice = toml.replace(
            "appid = \"wxbbbb\"",
            "appid = \"wxbbbb\"\noriginal_id = \"gh_aaaa\"",
        );
        let e2 = Config::from_sources(Some(&twice), &e).unwrap_err();
        assert!(e2.to_string().contains("gh_aaaa"), "{e2}");
        let bad = Config::from_sources(None, &env(&[("WXD_TOPOLOGY", "maybe")])).unwrap_err();
        assert!(bad.to_string().contains("maybe"), "{bad}");
    }

    #[test]
    fn inline_secret_in_file_is_refused() {
        let e = Config::from_sources(Some("secret = \"x\""), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("secret"));
    }
}
