//! Configuration: a TOML file plus `WXD_*` environment overrides.
//!
//! Every key of the file can be overridden by an environment variable named `WXD_<KEY>` (upper
//! case). Unknown keys, in the file or in the environment, are errors that name the nearest
//! known key: a typo in a deployment should stop the pod at start, not silently fall back to a
//! default.
//!
//! Secrets (an account's AppSecret, the callback token and AES key) come only from the
//! environment or from a file path. They are wrapped in [`Secret`], whose `Debug` never prints
//! the value, so they cannot reach a log line by accident.
//!
//! # Where things are
//! - [`settings`](self::settings): the one table of every key: its name (and so its `WXD_`
//!   variable), where it may come from, its type and clamp (a [`value`](self::value) codec),
//!   its default, its group, its help line and the field it fills. The loader, `check-config`
//!   (its printout and `--list-keys`) and `run --help` are all read off this table.
//! - `load`: the file and the environment merged, the table applied, then the checks that span
//!   keys (accounts, listeners, token mode).
//! - `secrets`: [`Secret`], [`Credentials`] and where an account's AppSecret comes from.
//! - `describe`: the redacted printout, `run --help`, `--list-keys`.
//! - `env`: [`Env`], so tests read a map instead of the process environment.
//!
//! # Adding a setting
//! Add its field to its group below (the group's `Default` gives the loader its blank), then
//! one line to the table in `settings.rs`, e.g.
//! `setting!("callback_forward_url", Callback, File, OptHttpUrl, Unset("(unset: nothing
//! forwarded)"), field: callback.forward_url, "…")`. That line gives the file key,
//! `WXD_CALLBACK_FORWARD_URL`, the type check, the default, `check-config`'s line,
//! `--list-keys` and `run --help`'s line; the unit tests check that every entry round-trips. A
//! secret uses the source `Secret` (only `WXD_<KEY>` or `WXD_<KEY>_FILE`, and a field in
//! [`Credentials`]); a URL with a password, `Mounted`. A key that only makes sense with others
//! (a token mode's URL, say) adds its rule to `load::check_across`. A per-account key (like
//! `publishers = [...]`) is a field of `RawAccount` (and its name in `ACCOUNT_KEYS`, which a
//! test keeps in step) in `load.rs` and of [`Account`], set in `load::build_accounts`, since
//! `[[accounts]]` entries are not `WXD_` variables.

mod describe;
mod env;
mod load;
mod secrets;
mod settings;
mod value;

use std::time::Duration;

use serde::Deserialize;

use crate::policy::RetryPolicy;

pub use describe::{broker_urls, env_help, env_keys, redact_url};
pub use env::{Env, ProcessEnv};
pub use secrets::{Credentials, Secret};

/// How access tokens are obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token`: every caller gets the same token, so replicas never
    /// invalidate each other. The default.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token after a 5-minute overlap.
    Classic,
    /// A central token service (`token_url`) owns every account's token; the worker needs no
    /// AppSecret.
    Central,
    /// A third-party platform (`component_*`, Redis required): each account is an authorizer,
    /// its token refreshed with the platform's refresh token.
    Component,
}

impl TokenMode {
    /// Whether the worker fetches tokens with each account's AppSecret.
    pub fn needs_app_secret(self) -> bool {
        match self {
            TokenMode::Stable | TokenMode::Classic => true,
            TokenMode::Central | TokenMode::Component => false,
        }
    }
}

/// The RabbitMQ queue type of the jobs queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, with a delivery limit that dead-letters poison jobs. The default.
    #[default]
    Quorum,
    /// A classic queue, for brokers or setups without quorum queues.
    Classic,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Who owns the queues and the exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// The worker declares everything at start-up (needs the `configure` permission). The
    /// default.
    #[default]
    Declare,
    /// The platform declares them (and sets their arguments with policies); the worker only
    /// checks that they exist, so it needs no `configure` permission.
    Passive,
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
    /// The RabbitMQ users that may send as this account (a job's AMQP `user_id`, which the
    /// broker checks against the connection's user). `None`: anyone who may publish to the
    /// jobs queue.
    pub publishers: Option<Vec<String>>,
}

impl Account {
    /// Whether a job published by `user_id` may be sent as this account.
    pub(crate) fn admits(&self, user_id: Option<&str>) -> bool {
        match &self.publishers {
            None => true,
            Some(list) => user_id.is_some_and(|u| list.iter().any(|p| p == u)),
        }
    }
}

/// The validated configuration, grouped by concern. Every value is defaulted and clamped by
/// the loader from the settings table (the groups' `Default` is only the blank it starts
/// from); code that reads a setting never has to `.max(1)` it.
/// The flat file and `WXD_*` keys of the contract map onto these groups.
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
    /// How many authorizers (component mode) have `appid` series of their own; the series
    /// of the others are folded into `appid="_other"`. Configured accounts always have theirs.
    pub metrics_top_accounts: u32,
    /// Secrets, loaded apart from the settings: empty for a configuration loaded with
    /// [`Config::without_credentials`].
    pub credentials: Credentials,
}

/// The broker: where jobs come from and where outcomes go.
#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone, Default)]
pub struct WechatSettings {
    pub api_base: String,
    pub token_mode: TokenMode,
    /// Forced `stable_token` refreshes allowed per Beijing day, across all replicas when
    /// Redis is configured (WeChat allows 20; the rest are left to other systems).
    pub token_force_budget: u32,
    /// The central token service (`token_mode = central`): `GET {url}?appid=A`.
    pub token_url: Option<String>,
    /// The third-party platform's appid (`token_mode = component`).
    pub component_appid: Option<String>,
    /// The pace of an authorizer that has no `[[accounts]]` entry (`token_mode = component`).
    pub component_rate_per_sec: u32,
    /// The daily quota of such an authorizer.
    pub component_daily_quota: Option<u64>,
    /// The permission sets each message type needs from an authorizer (component mode).
    pub component_permissions: crate::policy::permission::PermissionSets,
    /// The whole-request timeout of one API call.
    pub http_timeout: Duration,
}

/// How much work runs at once and how accounts are paced and paused.
#[derive(Debug, Clone, Default)]
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

/// WeChat's push callback (receipts, consents, and what is forwarded or published).
#[derive(Debug, Clone, Default)]
pub struct CallbackSettings {
    pub path: String,
    /// Pushes with an older timestamp are refused (replay protection).
    pub max_age: Duration,
    /// A second listener for the WeChat callback only. `None` (the default) serves the
    /// callback on `http_addr` with the metrics and probes, as the contract says; when set,
    /// only the callback is exposed through a public Ingress and `/metrics` and the probes stay
    /// on a port the Ingress never routes to.
    pub addr: Option<String>,
    /// The account's existing server, which gets every push the worker does not own.
    pub forward_url: Option<String>,
    /// Also forward receipts and subscription events, after their outcome is confirmed.
    pub forward_owned: bool,
    /// How long a forwarded push may take; below WeChat's 5 s, so WeChat always gets an answer.
    pub forward_timeout: Duration,
    /// Publish the pushes the worker does not own as `kind: event` outcomes.
    pub publish_events: bool,
    /// Include a user message's content in those events.
    pub publish_content: bool,
}

/// A configuration error: one line that names the key at fault and never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// The account a job names, or the only account when the job names none.
    pub(crate) fn account(&self, appid: Option<&str>) -> Option<&Account> {
        match appid {
            Some(id) => self.accounts.iter().find(|a| a.appid == id),
            None if self.accounts.len() == 1 => self.accounts.first(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests;
