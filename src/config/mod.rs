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

use crate::policy::RetryPolicy;

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

/// One WeChat Official Account the worker sends for. Its AppSecret is not here but in
/// [`Credentials`], so that a tool that only publishes jobs can load the accounts without one.
#[derive(Debug, Clone)]
pub struct Account {
    pub appid: String,
    /// Sends per second for this account (across the process, or across all replicas with Redis).
    pub rate_per_sec: u32,
    /// Successful sends allowed per Beijing day; the account pauses before it would pass it.
    pub daily_quota: Option<u64>,
    /// The account's original id (`gh_…`), which WeChat puts in a push's `ToUserName`. With
    /// several accounts a plaintext-mode receipt carries nothing else that names its account.
    pub original_id: Option<String>,
}

/// The validated configuration, grouped by concern. Every value is defaulted and clamped by
/// the loader, in one place ([`Config::from_sources`]); code that reads a setting never has to
/// `.max(1)` it. The flat file and `WXD_*` keys of the contract map onto these groups.
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp: AmqpSettings,
    pub wechat: WechatSettings,
    pub limits: LimitSettings,
    pub retry: RetryPolicy,
    pub callback: CallbackSettings,
    pub accounts: Vec<Account>,
    /// Where `/metrics`, the probes and (by default) the callback are served.
    pub http_addr: String,
    pub log_format: LogFormat,
    /// How long a stopping worker waits for its in-flight sends.
    pub drain_timeout: Duration,
    /// Secrets, loaded apart from the settings: empty for a configuration loaded with
    /// [`Config::without_credentials`].
    pub credentials: Credentials,
}

/// The broker: where jobs come from and where outcomes go.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// One URL, or a comma-separated list of a cluster's nodes.
    pub url: String,
    pub jobs_queue: String,
    pub jobs_queue_type: QueueType,
    pub outcomes_exchange: String,
    pub outcomes_queue: String,
    pub dead_queue: String,
    /// Unacked deliveries per consumer (at least 1).
    pub prefetch: u16,
    /// Deliveries of one job before a quorum queue dead-letters it.
    pub delivery_limit: u32,
    pub topology: Topology,
}

/// The WeChat API and its tokens.
#[derive(Debug, Clone)]
pub struct WechatSettings {
    pub api_base: String,
    pub token_mode: TokenMode,
    /// Forced `stable_token` refreshes allowed per Beijing day, across all replicas when
    /// Redis is configured (WeChat allows 20; the rest are left to other systems).
    pub token_force_budget: u32,
    /// The whole-request timeout of one API call.
    pub http_timeout: Duration,
}

/// How much work runs at once and how accounts are paced and paused.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Sends in flight per process (at least 1).
    pub concurrency: usize,
    /// Largest job body accepted; bigger ones end `invalid`.
    pub max_job_bytes: usize,
    /// How often a quota-paused account is probed (at least 1 s).
    pub quota_probe: Duration,
    /// How often a stopped account is probed (at least 1 s).
    pub account_stop_probe: Duration,
    /// Redis for the limiter, token and counters shared across replicas.
    pub redis_url: Option<String>,
    /// Replicas sharing the account limits when there is no Redis (at least 1).
    pub expected_replicas: u32,
}

/// WeChat's push callback (receipts and consents).
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub path: String,
    /// Pushes with an older timestamp are refused (replay protection).
    pub max_age: Duration,
    /// A second listener for the WeChat callback only. `None` (the default) serves the
    /// callback on `http_addr` with the metrics and probes, as the contract says; when set,
    /// only the callback is exposed through a public Ingress and `/metrics` and the probes stay
    /// on a port the Ingress never routes to.
    pub addr: Option<String>,
}

/// The secrets: each account's AppSecret and the callback's token and AES key. Kept apart from
/// the settings so that a configuration can be loaded, printed and checked without them, and
/// so that nothing but the token request and the callback ever reads them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    app_secrets: BTreeMap<String, Secret>,
    pub callback_token: Option<Secret>,
    pub callback_aes_key: Option<Secret>,
}

impl Credentials {
    /// The AppSecret of `appid`, if it was loaded.
    pub fn app_secret(&self, appid: &str) -> Option<&Secret> {
        self.app_secrets.get(appid)
    }

    /// Sets the AppSecret of `appid` (the loader, the demo and tests).
    pub fn set_app_secret(&mut self, appid: impl Into<String>, secret: Secret) {
        self.app_secrets.insert(appid.into(), secret);
    }
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

/// Whether a load reads the secrets ([`Credentials`]) and requires one per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Required,
    Skipped,
}

/// A probe interval: zero would mean probing in a tight loop, so it is at least a second.
fn secs_at_least_one(secs: u64) -> Duration {
    Duration::from_secs(secs.max(1))
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
    ("token_force_budget", Kind::Int),
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
    ("callback_addr", Kind::Str),
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
    "WXD_AMQP_URL_FILE",
    "WXD_REDIS_URL_FILE",
];

/// Settings that may carry a password and so may also come from a mounted file
/// (`WXD_<KEY>_FILE`, e.g. a Kubernetes Secret volume), keeping them out of the environment.
const FILE_KEYS: &[(&str, &str)] = &[("amqp_url", "WXD_AMQP_URL"), ("redis_url", "WXD_REDIS_URL")];

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
    /// The nodes of a cluster, as a list in the file (`WXD_AMQP_URL` takes them
    /// comma-separated, and wins over this).
    amqp_urls: Option<Vec<String>>,
    jobs_queue: Option<String>,
    jobs_queue_type: Option<QueueType>,
    outcomes_exchange: Option<String>,
    outcomes_queue: Option<String>,
    dead_queue: Option<String>,
    api_base: Option<String>,
    appid: Option<String>,
    token_mode: Option<TokenMode>,
    token_force_budget: Option<u32>,
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
    callback_addr: Option<String>,
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
    /// Loads from an optional TOML file (else `WXD_CONFIG`) and the process environment, with
    /// every account's AppSecret and the callback secrets.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(file, Secrets::Required)
    }

    /// Loads the settings and accounts only: no secret is read or required, and
    /// [`Config::credentials`] is empty. For tools that never call WeChat (`publish`).
    pub fn load_without_credentials(file: Option<&Path>) -> Result<Config, ConfigError> {
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
        Config::build(text.as_deref(), &env, secrets)
    }

    /// Builds a configuration from TOML text and an environment.
    pub fn from_sources(toml_text: Option<&str>, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::build(toml_text, env, Secrets::Required)
    }

    /// [`Config::from_sources`] without reading or requiring any secret.
    pub fn without_credentials(
        toml_text: Option<&str>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        Config::build(toml_text, env, Secrets::Skipped)
    }

    fn build(
        toml_text: Option<&str>,
        env: &dyn Env,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
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
        for (key, var) in FILE_KEYS {
            let file_var = format!("{var}_FILE");
            let Some(path) = env.var(&file_var) else {
                continue;
            };
            if env.var(var).is_some() {
                return Err(err(format!("{var} and {file_var}: set one, not both")));
            }
            let value = read_secret_file(Path::new(&path), &file_var)?;
            table.insert(
                (*key).to_string(),
                toml::Value::String(value.expose().to_string()),
            );
        }
        let raw: Raw = Raw::deserialize(toml::Value::Table(table))
            .map_err(|e| err(one_line(&e.to_string())))?;
        Config::from_raw(raw, env, secrets)
    }

    fn from_raw(raw: Raw, env: &dyn Env, secrets: Secrets) -> Result<Config, ConfigError> {
        let default_rate = raw.rate_per_sec.unwrap_or(DEFAULT_RATE_PER_SEC);
        let mut accounts = Vec::new();
        let mut credentials = Credentials::default();
        let required = secrets == Secrets::Required;
        if let Some(appid) = raw.appid.clone() {
            if required {
                let secret = secret_from_env(env, "WXD_SECRET")?.ok_or_else(|| {
                    err("WXD_SECRET: missing (or set WXD_SECRET_FILE) for WXD_APPID")
                })?;
                credentials.set_app_secret(&appid, secret);
            }
            accounts.push(Account {
                appid,
                rate_per_sec: default_rate,
                daily_quota: raw.daily_quota,
                original_id: raw.original_id.clone(),
            });
        }
        for (i, a) in raw.accounts.into_iter().enumerate() {
            if required {
                let secret = account_secret(&a, &format!("accounts[{i}] ({})", a.appid), env)?;
                credentials.set_app_secret(&a.appid, secret);
            }
            accounts.push(Account {
                appid: a.appid,
                rate_per_sec: a.rate_per_sec.unwrap_or(default_rate),
                daily_quota: a.daily_quota,
                original_id: a.original_id,
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
            .or_else(|| raw.amqp_urls.as_ref().map(|list| list.join(",")))
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let urls = broker_urls(&amqp_url);
        if urls.is_empty()
            || !urls
                .iter()
                .all(|u| u.starts_with("amqp://") || u.starts_with("amqps://"))
        {
            return Err(err(
                "amqp_url (WXD_AMQP_URL): each comma-separated URL must start with amqp:// or \
                 amqps://",
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
        if let Some(addr) = &raw.callback_addr {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(err(format!(
                    "callback_addr (WXD_CALLBACK_ADDR): not host:port: {addr:?}"
                )));
            }
            // Port 0 (any free port, in tests) on both is two listeners, not a clash.
            if *addr == http_addr && !addr.ends_with(":0") {
                return Err(err(
                    "callback_addr (WXD_CALLBACK_ADDR): must differ from WXD_HTTP_ADDR \
                     (leave it unset to serve the callback on WXD_HTTP_ADDR)",
                ));
            }
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
        if required {
            credentials.callback_token = secret_from_env(env, "WXD_CALLBACK_TOKEN")?;
            credentials.callback_aes_key = secret_from_env(env, "WXD_CALLBACK_AES_KEY")?;
        }
        if let Some(k) = &credentials.callback_aes_key
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
        let token_mode = raw.token_mode.unwrap_or(TokenMode::Stable);
        let token_force_budget = raw.token_force_budget.unwrap_or(10);
        if token_force_budget > 20 {
            return Err(err(
                "token_force_budget: at most 20 (WeChat allows 20 forced refreshes a day)",
            ));
        }
        let expected_replicas = raw.expected_replicas.unwrap_or(1).max(1);
        if token_mode == TokenMode::Classic && expected_replicas > 1 && raw.redis_url.is_none() {
            // Every classic fetch invalidates the previous token after 5 minutes, so replicas
            // that fetch on their own keep killing each other's tokens.
            return Err(err(
                "token_mode: classic with expected_replicas > 1 needs redis_url, so that the \
                 replicas share one token; use token_mode = \"stable\" (the default) or set \
                 WXD_REDIS_URL",
            ));
        }
        Ok(Config {
            amqp: AmqpSettings {
                url: amqp_url,
                jobs_queue: raw.jobs_queue.unwrap_or_else(|| "wxdispatch.jobs".into()),
                jobs_queue_type: raw.jobs_queue_type.unwrap_or(QueueType::Quorum),
                outcomes_exchange: raw
                    .outcomes_exchange
                    .unwrap_or_else(|| "wxdispatch.outcomes".into()),
                outcomes_queue: raw
                    .outcomes_queue
                    .unwrap_or_else(|| "wxdispatch.outcomes".into()),
                dead_queue: raw.dead_queue.unwrap_or_else(|| "wxdispatch.dead".into()),
                prefetch,
                delivery_limit: raw.delivery_limit.unwrap_or(5),
                topology: raw.topology.unwrap_or(Topology::Declare),
            },
            wechat: WechatSettings {
                api_base,
                token_mode,
                token_force_budget,
                http_timeout: Duration::from_millis(raw.http_timeout_ms.unwrap_or(5000)),
            },
            limits: LimitSettings {
                concurrency,
                max_job_bytes: raw.max_job_bytes.unwrap_or(256 * 1024),
                quota_probe: secs_at_least_one(raw.quota_probe_secs.unwrap_or(600)),
                account_stop_probe: secs_at_least_one(raw.account_stop_probe_secs.unwrap_or(300)),
                redis_url: raw.redis_url,
                expected_replicas,
            },
            retry: RetryPolicy {
                max_attempts,
                base: Duration::from_millis(raw.retry_base_ms.unwrap_or(200)),
                max_delay: Duration::from_secs(raw.retry_max_delay_secs.unwrap_or(60)),
                budget: Duration::from_secs(raw.retry_budget_secs.unwrap_or(540)),
                inline_max: Duration::from_millis(raw.inline_retry_max_ms.unwrap_or(3000)),
            },
            callback: CallbackSettings {
                path: callback_path,
                max_age: Duration::from_secs(raw.callback_max_age_secs.unwrap_or(300)),
                addr: raw.callback_addr,
            },
            accounts,
            http_addr,
            log_format,
            drain_timeout: Duration::from_secs(raw.drain_timeout_secs.unwrap_or(30)),
            credentials,
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

    /// Every setting as its `WXD_*` name and effective value, in the order of the key table,
    /// then the secrets: what `check-config` prints. Passwords in URLs and every secret are
    /// redacted, so the output can go to a CI log or an initContainer's log.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = KEYS
            .iter()
            .map(|(key, _)| {
                (
                    format!("WXD_{}", key.to_ascii_uppercase()),
                    self.setting(key),
                )
            })
            .collect();
        let set = |s: &Option<Secret>| if s.is_some() { "(set)" } else { "(unset)" };
        out.push((
            "WXD_CALLBACK_TOKEN".into(),
            set(&self.credentials.callback_token).into(),
        ));
        out.push((
            "WXD_CALLBACK_AES_KEY".into(),
            set(&self.credentials.callback_aes_key).into(),
        ));
        for a in &self.accounts {
            out.push((
                "account".into(),
                format!(
                    "{} rate_per_sec={} daily_quota={} secret={}",
                    a.appid,
                    a.rate_per_sec,
                    a.daily_quota.map_or("none".into(), |q| q.to_string()),
                    if self.credentials.app_secret(&a.appid).is_some() {
                        "(set)"
                    } else {
                        "(not loaded)"
                    }
                ),
            ));
        }
        out
    }

    fn setting(&self, key: &str) -> String {
        let opt = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.into());
        match key {
            "amqp_url" => redact_url(&self.amqp.url),
            "jobs_queue" => self.amqp.jobs_queue.clone(),
            "jobs_queue_type" => format!("{:?}", self.amqp.jobs_queue_type).to_ascii_lowercase(),
            "outcomes_exchange" => self.amqp.outcomes_exchange.clone(),
            "outcomes_queue" => self.amqp.outcomes_queue.clone(),
            "dead_queue" => self.amqp.dead_queue.clone(),
            "api_base" => self.wechat.api_base.clone(),
            "appid" => match self.accounts.as_slice() {
                [] => "(none)".into(),
                accounts => accounts
                    .iter()
                    .map(|a| a.appid.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            },
            "token_mode" => format!("{:?}", self.wechat.token_mode).to_ascii_lowercase(),
            "token_force_budget" => self.wechat.token_force_budget.to_string(),
            "topology" => format!("{:?}", self.amqp.topology).to_ascii_lowercase(),
            "original_id" => match self.accounts.as_slice() {
                [a] => a.original_id.clone().unwrap_or_else(|| "none".into()),
                _ => "(per account)".into(),
            },
            "rate_per_sec" => match self.accounts.first() {
                Some(a) => a.rate_per_sec.to_string(),
                None => DEFAULT_RATE_PER_SEC.to_string(),
            },
            "daily_quota" => match self.accounts.first().and_then(|a| a.daily_quota) {
                Some(q) => q.to_string(),
                None => "none".into(),
            },
            "http_addr" => self.http_addr.clone(),
            "callback_path" => self.callback.path.clone(),
            "callback_max_age_secs" => self.callback.max_age.as_secs().to_string(),
            "concurrency" => self.limits.concurrency.to_string(),
            "prefetch" => self.amqp.prefetch.to_string(),
            "max_attempts" => self.retry.max_attempts.to_string(),
            "retry_base_ms" => self.retry.base.as_millis().to_string(),
            "retry_max_delay_secs" => self.retry.max_delay.as_secs().to_string(),
            "retry_budget_secs" => self.retry.budget.as_secs().to_string(),
            "inline_retry_max_ms" => self.retry.inline_max.as_millis().to_string(),
            "http_timeout_ms" => self.wechat.http_timeout.as_millis().to_string(),
            "quota_probe_secs" => self.limits.quota_probe.as_secs().to_string(),
            "account_stop_probe_secs" => self.limits.account_stop_probe.as_secs().to_string(),
            "drain_timeout_secs" => self.drain_timeout.as_secs().to_string(),
            "delivery_limit" => self.amqp.delivery_limit.to_string(),
            "max_job_bytes" => self.limits.max_job_bytes.to_string(),
            "redis_url" => self
                .limits
                .redis_url
                .as_deref()
                .map_or("(unset: no shared limiter)".into(), redact_url),
            "expected_replicas" => self.limits.expected_replicas.to_string(),
            "log_format" => format!("{:?}", self.log_format).to_ascii_lowercase(),
            "callback_addr" => opt(
                &self.callback.addr,
                "(unset: the callback is on WXD_HTTP_ADDR)",
            ),
            // A key added to KEYS without a line here shows up as this, and the unit test
            // `every_key_has_a_setting_and_a_default` fails.
            _ => "?".into(),
        }
    }
}

/// The default of `rate_per_sec`, also shown by `run --help`.
const DEFAULT_RATE_PER_SEC: u32 = 50;

/// Every `WXD_<KEY>` variable the loader accepts (the file's keys, upper-cased), for tools
/// that check manifests against the binary instead of parsing this source file.
pub fn env_keys() -> Vec<String> {
    KEYS.iter()
        .map(|(k, _)| format!("WXD_{}", k.to_ascii_uppercase()))
        .collect()
}

/// `run --help`'s list of every `WXD_*` variable with its default, built from the defaults the
/// loader really applies (an empty environment), so the help cannot drift from the code.
pub fn env_help() -> String {
    let mut text =
        String::from("Environment (WXD_<KEY> overrides the file's <key>; default shown):\n");
    let defaults = Config::from_sources(None, &BTreeMap::new())
        .expect("the defaults are a valid configuration");
    for (name, value) in defaults.settings() {
        if matches!(name.as_str(), "WXD_CALLBACK_TOKEN" | "WXD_CALLBACK_AES_KEY") {
            continue; // listed below with the other secrets
        }
        let value = match name.as_str() {
            "WXD_LOG_FORMAT" => "json (text when stderr is a terminal)".to_string(),
            _ => value,
        };
        text.push_str(&format!("  {name:<30} {value}\n"));
    }
    for (name, what) in [
        ("WXD_CONFIG", "the TOML file (same as --config)"),
        ("WXD_SECRET", "AppSecret of WXD_APPID (or WXD_SECRET_FILE)"),
        ("WXD_SECRET_<APPID>", "AppSecret of an [[accounts]] entry"),
        (
            "WXD_CALLBACK_TOKEN",
            "callback token (or WXD_CALLBACK_TOKEN_FILE)",
        ),
        (
            "WXD_CALLBACK_AES_KEY",
            "EncodingAESKey (or WXD_CALLBACK_AES_KEY_FILE)",
        ),
        ("WXD_AMQP_URL_FILE", "read WXD_AMQP_URL from this file"),
        ("WXD_REDIS_URL_FILE", "read WXD_REDIS_URL from this file"),
    ] {
        text.push_str(&format!("  {name:<30} {what}\n"));
    }
    text
}

/// The broker addresses of `urls`, a comma-separated list (one URL is a list of one), as
/// `WXD_AMQP_URL` takes them. Here rather than in `amqp`, so the loader needs no AMQP code.
pub fn broker_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// A URL with credentials (a broker, Redis; or a comma-separated list of them) with every
/// password replaced by `***`, for logs and messages.
pub fn redact_url(urls: &str) -> String {
    broker_urls(urls)
        .into_iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let creds = &url[s + 3..at];
                let user = creds.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            }
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The AppSecret of an `[[accounts]]` entry (`key` names the entry in errors): from its
/// `secret_env`, its `secret_file`, or else `WXD_SECRET_<APPID>`.
fn account_secret(a: &RawAccount, key: &str, env: &dyn Env) -> Result<Secret, ConfigError> {
    match (&a.secret_env, &a.secret_file) {
        (Some(var), None) => env
            .var(var)
            .map(Secret::new)
            .ok_or_else(|| err(format!("{key}.secret_env: variable {var} is not set"))),
        (None, Some(path)) => read_secret_file(path, &format!("{key}.secret_file")),
        (None, None) => {
            // Convention: WXD_SECRET_<APPID>, so a Kubernetes Secret can hold them all.
            let var = format!("WXD_SECRET_{}", a.appid.to_ascii_uppercase());
            secret_from_env(env, &var)?.ok_or_else(|| {
                err(format!(
                    "{key}: no secret; set secret_env, secret_file or {var}"
                ))
            })
        }
        (Some(_), Some(_)) => Err(err(format!(
            "{key}: set secret_env or secret_file, not both"
        ))),
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

    /// Issue 14.4: classic tokens are per caller (each fetch invalidates the last one after
    /// five minutes), so several replicas must not each fetch their own.
    #[test]
    fn classic_tokens_with_several_replicas_need_redis() {
        let env = |extra: &[(&str, &str)]| {
            let mut m: std::collections::BTreeMap<String, String> = [
                ("WXD_APPID", "wxclassic"),
                ("WXD_SECRET", "s"),
                ("WXD_TOKEN_MODE", "classic"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            for (k, v) in extra {
                m.insert(k.to_string(), v.to_string());
            }
            m
        };
        let e = Config::from_sources(None, &env(&[("WXD_EXPECTED_REPLICAS", "3")])).unwrap_err();
        assert!(e.to_string().contains("token_mode"), "{e}");
        assert!(Config::from_sources(None, &env(&[])).is_ok());
        let e = Config::from_sources(None, &env(&[("WXD_TOKEN_FORCE_BUDGET", "21")])).unwrap_err();
        assert!(e.to_string().contains("token_force_budget"), "{e}");
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(c.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.amqp.jobs_queue, "wxdispatch.jobs");
        assert_eq!(c.amqp.outcomes_exchange, "wxdispatch.outcomes");
        assert_eq!(c.amqp.outcomes_queue, "wxdispatch.outcomes");
        assert_eq!(c.amqp.dead_queue, "wxdispatch.dead");
        assert_eq!(c.wechat.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.wechat.token_mode, TokenMode::Stable);
        assert_eq!(c.http_addr, "0.0.0.0:9090");
        assert_eq!(c.callback.path, "/wechat/callback");
        assert_eq!(c.limits.quota_probe, Duration::from_secs(600));
        assert_eq!(c.amqp.jobs_queue_type, QueueType::Quorum);
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
        assert_eq!(c.amqp.jobs_queue, "from-env");
        assert_eq!(c.limits.concurrency, 8);
        assert_eq!(c.accounts.len(), 1);
        assert_eq!(c.accounts[0].rate_per_sec, 200);
        assert_eq!(
            c.credentials
                .app_secret(&c.accounts[0].appid)
                .unwrap()
                .expose(),
            "s3cret"
        );
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
        assert_eq!(c.credentials.app_secret("wxbbbb").unwrap().expose(), "b");
        assert!(c.account(Some("wxbbbb")).is_some());
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

    /// Every validation rule as a row: the settings that break it, and the words the error
    /// must contain so an operator knows which key to fix. Each row is checked against a
    /// base that is valid on its own, so a row can only fail for its own rule.
    #[test]
    fn each_invalid_setting_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("wxd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, "from-a-file\n").unwrap();
        let empty_file = dir.join("empty");
        std::fs::write(&empty_file, "  \n").unwrap();
        let missing_file = dir.join("missing");
        let (sf, ef, mf) = (
            secret_file.display().to_string(),
            empty_file.display().to_string(),
            missing_file.display().to_string(),
        );
        let base = [("WXD_APPID", "wx0123456789abcdef"), ("WXD_SECRET", "s")];
        let ok = |toml: Option<&str>, pairs: &[(&str, &str)]| {
            let mut e = env(&base);
            e.extend(env(pairs));
            Config::from_sources(toml, &e)
        };
        assert!(ok(None, &[]).is_ok(), "the base itself is valid");
        let long = "q".repeat(201);
        let long_ok = "q".repeat(200);
        let aes_42 = "a".repeat(42);
        let aes_44 = "a".repeat(44);
        let dup = "[[accounts]]\nappid = \"wx0123456789abcdef\"\n";
        let two = "[[accounts]]\nappid = \"wxaaaa\"\n[[accounts]]\nappid = \"wxaaaa\"\n";
        let env_and_file = format!(
            "[[accounts]]\nappid = \"wxcccc\"\nsecret_env = \"S\"\nsecret_file = \"{sf}\"\n"
        );
        let unset_env = "[[accounts]]\nappid = \"wxcccc\"\nsecret_env = \"NOT_SET\"\n";
        let bad_file = format!("[[accounts]]\nappid = \"wxcccc\"\nsecret_file = \"{mf}\"\n");
        let empty_secret_file =
            format!("[[accounts]]\nappid = \"wxcccc\"\nsecret_file = \"{ef}\"\n");
        let no_secret = "[[accounts]]\nappid = \"wxcccc\"\n";
        /// A case: its name, the file, the extra settings, and words the error must contain.
        type Row<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
        let zero_rate = "[[accounts]]\nappid = \"wxcccc\"\nrate_per_sec = 0\n";
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("bad appid", None, vec![("WXD_APPID", "wx bad!")], "not a valid appid"),
            ("empty appid", None, vec![("WXD_APPID", "")], "not a valid appid"),
            ("empty secret", None, vec![("WXD_SECRET", "  ")], "empty"),
            ("empty secret file", Some(&empty_secret_file), vec![], "empty"),
            ("rate 0", None, vec![("WXD_RATE_PER_SEC", "0")], "rate_per_sec"),
            ("rate 0 in the file", Some(zero_rate), vec![("WXD_SECRET_WXCCCC", "c")], "rate_per_sec"),
            ("appid twice (env and file)", Some(dup), vec![("WXD_SECRET_WX0123456789ABCDEF", "x")], "configured twice"),
            ("appid twice in the file", Some(two), vec![("WXD_SECRET_WXAAAA", "a")], "configured twice"),
            ("secret_env and secret_file", Some(&env_and_file), vec![("S", "x")], "not both"),
            ("secret_env not set", Some(unset_env), vec![], "NOT_SET is not set"),
            ("secret_file unreadable", Some(&bad_file), vec![], "secret_file: cannot read"),
            ("no secret source", Some(no_secret), vec![], "WXD_SECRET_WXCCCC"),
            ("jobs queue too long", None, vec![("WXD_JOBS_QUEUE", &long)], "jobs_queue"),
            ("jobs queue empty", None, vec![("WXD_JOBS_QUEUE", "")], "jobs_queue"),
            ("outcomes exchange too long", None, vec![("WXD_OUTCOMES_EXCHANGE", &long)], "outcomes_exchange"),
            ("outcomes queue too long", None, vec![("WXD_OUTCOMES_QUEUE", &long)], "outcomes_queue"),
            ("dead queue too long", None, vec![("WXD_DEAD_QUEUE", &long)], "dead_queue"),
            ("AES key of 42", None, vec![("WXD_CALLBACK_AES_KEY", &aes_42)], "43 characters"),
            ("AES key of 44", None, vec![("WXD_CALLBACK_AES_KEY", &aes_44)], "43 characters"),
        ];
        for (name, toml, pairs, want) in &rows {
            match ok(*toml, pairs) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(e.to_string().contains(want), "{name}: {e} (want {want:?})"),
            }
        }
        // The edges that are valid, so the rules above are not simply "refuse everything".
        let c = ok(None, &[("WXD_JOBS_QUEUE", &long_ok)]).unwrap();
        assert_eq!(c.amqp.jobs_queue.len(), 200);
        assert!(ok(None, &[("WXD_CALLBACK_AES_KEY", &"a".repeat(43))]).is_ok());
        assert!(ok(None, &[("WXD_RATE_PER_SEC", "1")]).is_ok());
        // The single account's secret from a file: read and trimmed, or a named error.
        let only_file = |path: &str| {
            Config::from_sources(
                None,
                &env(&[
                    ("WXD_APPID", "wx0123456789abcdef"),
                    ("WXD_SECRET_FILE", path),
                ]),
            )
        };
        assert_eq!(
            only_file(&sf)
                .unwrap()
                .credentials
                .app_secret("wx0123456789abcdef")
                .unwrap()
                .expose(),
            "from-a-file"
        );
        let e = only_file(&mf).unwrap_err().to_string();
        assert!(e.contains("WXD_SECRET_FILE: cannot read"), "{e}");
        let e = only_file(&ef).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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
        assert_eq!(c.amqp.topology, Topology::Passive);
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(c.amqp.topology, Topology::Declare, "the default");
        let single = env(&[
            ("WXD_APPID", "wxaaaa"),
            ("WXD_SECRET", "a"),
            ("WXD_ORIGINAL_ID", "gh_single"),
            ("WXD_TOPOLOGY", "passive"),
        ]);
        let c = Config::from_sources(None, &single).unwrap();
        assert_eq!(c.accounts[0].original_id.as_deref(), Some("gh_single"));
        assert_eq!(c.amqp.topology, Topology::Passive);
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

    #[test]
    fn every_key_has_a_setting_and_a_default_in_run_help() {
        let help = env_help();
        let c = Config::from_sources(None, &env(&[])).unwrap();
        for (key, _) in KEYS {
            let name = format!("WXD_{}", key.to_ascii_uppercase());
            assert!(help.contains(&name), "run --help lacks {name}:\n{help}");
            assert_ne!(c.setting(key), "?", "Config::setting has no line for {key}");
        }
        assert!(
            help.contains("WXD_PREFETCH") && help.contains("128"),
            "{help}"
        );
    }

    #[test]
    fn settings_redact_every_password_and_secret() {
        let e = env(&[
            ("WXD_AMQP_URL", "amqps://app:hunter2-amqp@rabbit:5671/%2f"),
            ("WXD_REDIS_URL", "redis://:hunter2-redis@redis:6379/0"),
            ("WXD_APPID", "wx1"),
            ("WXD_SECRET", "hunter2-appsecret"),
            ("WXD_CALLBACK_TOKEN", "hunter2-token"),
        ]);
        let c = Config::from_sources(None, &e).unwrap();
        let all = format!("{:?}", c.settings());
        assert!(!all.contains("hunter2"), "{all}");
        assert!(all.contains("amqps://app:***@rabbit:5671/%2f"), "{all}");
        assert!(all.contains("(set)"), "{all}");
    }

    #[test]
    fn amqp_and_redis_urls_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("wxd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let amqp = dir.join("amqp");
        let redis = dir.join("redis");
        std::fs::write(&amqp, "amqp://u:p@broker:5672/%2f\n").unwrap();
        std::fs::write(&redis, "redis://:p@redis:6379/1\n").unwrap();
        let e = env(&[
            ("WXD_AMQP_URL_FILE", amqp.to_str().unwrap()),
            ("WXD_REDIS_URL_FILE", redis.to_str().unwrap()),
        ]);
        let c = Config::from_sources(None, &e).unwrap();
        assert_eq!(c.amqp.url, "amqp://u:p@broker:5672/%2f");
        assert_eq!(
            c.limits.redis_url.as_deref(),
            Some("redis://:p@redis:6379/1")
        );
        let both = env(&[
            ("WXD_AMQP_URL_FILE", amqp.to_str().unwrap()),
            ("WXD_AMQP_URL", "amqp://x"),
        ]);
        let msg = Config::from_sources(None, &both).unwrap_err().to_string();
        assert!(msg.contains("WXD_AMQP_URL_FILE"), "{msg}");
        let missing = env(&[("WXD_REDIS_URL_FILE", "/nonexistent/wxd-redis-url")]);
        let msg = Config::from_sources(None, &missing)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("WXD_REDIS_URL_FILE"), "{msg}");
        // The file's content is checked like the variable's.
        std::fs::write(&amqp, "http://not-amqp\n").unwrap();
        let e = env(&[("WXD_AMQP_URL_FILE", amqp.to_str().unwrap())]);
        let msg = Config::from_sources(None, &e).unwrap_err().to_string();
        assert!(msg.contains("WXD_AMQP_URL"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn callback_addr_is_optional_validated_and_distinct() {
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(
            c.callback.addr, None,
            "the contract's single listener by default"
        );
        let c = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "0.0.0.0:8080")])).unwrap();
        assert_eq!(c.callback.addr.as_deref(), Some("0.0.0.0:8080"));
        let msg = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "8080")]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("WXD_CALLBACK_ADDR"), "{msg}");
        let msg = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "0.0.0.0:9090")]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("WXD_CALLBACK_ADDR"), "{msg}");
    }

    #[test]
    fn env_keys_name_every_key_once() {
        let keys = env_keys();
        assert_eq!(keys.len(), KEYS.len());
        assert!(keys.contains(&"WXD_AMQP_URL".to_string()));
        assert!(keys.contains(&"WXD_TOKEN_FORCE_BUDGET".to_string()));
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn without_credentials_no_secret_is_read_and_the_accounts_are_kept() {
        // Secret sources that would fail if they were read (the accounts as inline tables).
        let toml = r#"accounts = [
            { appid = "wxa0000000000001", secret_file = "/nonexistent/secret" },
            { appid = "wxb0000000000002", secret_env = "UNSET_VARIABLE" },
        ]"#;
        let e = env(&[("WXD_APPID", "wxc0000000000003"), ("WXD_JOBS_QUEUE", "q")]);
        let c = Config::without_credentials(Some(toml), &e).unwrap();
        let ids: Vec<&str> = c.accounts.iter().map(|a| a.appid.as_str()).collect();
        assert_eq!(
            ids,
            ["wxc0000000000003", "wxa0000000000001", "wxb0000000000002"]
        );
        assert!(
            c.accounts
                .iter()
                .all(|a| c.credentials.app_secret(&a.appid).is_none())
        );
        assert_eq!(c.amqp.jobs_queue, "q");
        // Unknown keys are still refused, like the worker does.
        assert!(Config::without_credentials(None, &env(&[("WXD_JOBS_QUEUEE", "q")])).is_err());
    }
}
