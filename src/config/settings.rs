//! The settings table: every key, declared once.
//!
//! One [`setting!`] line per key gives its file key (and so its `WXD_<KEY>` variable), where
//! it may come from, its value type with its range or clamp (a codec of [`super::value`]), its
//! default, its group, the field it fills and its help line. The loader, `check-config` and
//! `run --help` all read this table; nothing else lists the keys.

use std::time::Duration;

use toml::Value;

use super::value::{
    ANY, Addr, AesKey, AmqpUrls, AtLeast, Choice, Codec, Flag, HttpBase, Kind, Millis, OptAddr,
    OptHttpUrl, OptNames, OptText, OptWhole, QueueName, RedisUrl, RoutePath, SecretText, Secs,
    SetIds, Whole,
};
use super::{
    AmqpSettings, CallbackSettings, Config, Credentials, LimitSettings, LogFormat, QueueType,
    Secret, TokenMode, Topology, WechatSettings,
};
use crate::policy::RetryPolicy;

/// Where a key may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The file's key, or its `WXD_<KEY>` variable.
    File,
    /// As [`Source::File`], or a mounted file named by `WXD_<KEY>_FILE` (a URL that may carry
    /// a password, kept out of the environment).
    Mounted,
    /// Only `WXD_<KEY>` or `WXD_<KEY>_FILE`, never the file, and read only when the secrets
    /// are loaded.
    Secret,
}

/// Which part of the configuration a key belongs to (the sections of `run --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Amqp,
    Wechat,
    Account,
    Limits,
    Retry,
    Callback,
    Process,
}

impl Group {
    pub(super) const ALL: [Group; 7] = [
        Group::Amqp,
        Group::Wechat,
        Group::Account,
        Group::Limits,
        Group::Retry,
        Group::Callback,
        Group::Process,
    ];

    pub(super) fn title(self) -> &'static str {
        match self {
            Group::Amqp => "broker",
            Group::Wechat => "WeChat API",
            Group::Account => "a single account (several: [[accounts]] in the file)",
            Group::Limits => "limits",
            Group::Retry => "retries",
            Group::Callback => "callback",
            Group::Process => "process",
        }
    }
}

/// A key's default.
#[derive(Debug, Clone, Copy)]
pub(super) enum DefaultValue {
    Num(i64),
    Str(&'static str),
    Bool(bool),
    /// No value; the text says what that means.
    Unset(&'static str),
    /// Worked out at load time; the text says how.
    Auto(fn() -> Value, &'static str),
}

impl DefaultValue {
    /// The value the loader applies when the key is not set.
    pub(super) fn value(self) -> Option<Value> {
        match self {
            DefaultValue::Num(n) => Some(Value::Integer(n)),
            DefaultValue::Str(s) => Some(Value::String(s.into())),
            DefaultValue::Bool(b) => Some(Value::Boolean(b)),
            DefaultValue::Unset(_) => None,
            DefaultValue::Auto(f, _) => Some(f()),
        }
    }

    /// What `run --help` and `check-config` say when the key is not set.
    pub(super) fn describe(self) -> String {
        match self {
            DefaultValue::Num(n) => n.to_string(),
            DefaultValue::Str(s) => s.into(),
            DefaultValue::Bool(b) => b.to_string(),
            DefaultValue::Unset(what) | DefaultValue::Auto(_, what) => what.into(),
        }
    }
}

/// One key of the configuration.
pub(super) struct Setting {
    /// The file's key; the variable is `WXD_` and the key in upper case.
    pub key: &'static str,
    pub group: Group,
    pub source: Source,
    /// How an environment string is typed.
    pub kind: Kind,
    pub default: DefaultValue,
    pub help: &'static str,
    /// Decodes, checks and stores a value in the configuration being built.
    pub apply: fn(&mut Draft, Value) -> Result<(), String>,
    /// The effective value, as `check-config` prints it (`None`: unset).
    pub show: fn(&Config) -> Option<String>,
}

impl Setting {
    /// `WXD_<KEY>`.
    pub(super) fn env(&self) -> String {
        format!("WXD_{}", self.key.to_ascii_uppercase())
    }

    /// How an error names the key: the file key and its variable, or (for a secret, which
    /// has no file key) the variable alone.
    pub(super) fn name(&self) -> String {
        match self.source {
            Source::Secret => self.env(),
            _ => format!("{} ({})", self.key, self.env()),
        }
    }
}

/// The configuration while it is built: the settings, and the top-level account keys that
/// become the single account and the default rate of `[[accounts]]`.
pub(super) struct Draft {
    pub config: Config,
    pub single: SingleAccount,
}

/// The top-level `appid`, `secret`, `rate_per_sec`, `daily_quota` and `original_id`.
#[derive(Default)]
pub(super) struct SingleAccount {
    pub appid: Option<String>,
    pub secret: Option<Secret>,
    pub rate_per_sec: u32,
    pub daily_quota: Option<u64>,
    pub original_id: Option<String>,
    pub publishers: Option<Vec<String>>,
}

/// A table entry. `field:` names the configuration field the value fills and shows;
/// `single:` a field of [`SingleAccount`], shown by the function given.
macro_rules! setting {
    ($key:literal, $group:ident, $source:ident, $codec:ty, $default:expr,
     field: $($path:ident).+, $help:literal) => {
        setting!(@entry $key, $group, $source, $codec, $default, $help,
            |d, v| {
                d.config.$($path).+ = <$codec as Codec>::decode(v)?;
                Ok(())
            },
            |c| <$codec as Codec>::show(&c.$($path).+))
    };
    ($key:literal, $group:ident, $source:ident, $codec:ty, $default:expr,
     single: $field:ident, show: $show:expr, $help:literal) => {
        setting!(@entry $key, $group, $source, $codec, $default, $help,
            |d, v| {
                d.single.$field = <$codec as Codec>::decode(v)?;
                Ok(())
            },
            $show)
    };
    (@entry $key:literal, $group:ident, $source:ident, $codec:ty, $default:expr, $help:literal,
     $apply:expr, $show:expr) => {
        Setting {
            key: $key,
            group: Group::$group,
            source: Source::$source,
            kind: <$codec as Codec>::KIND,
            default: $default,
            help: $help,
            apply: $apply,
            show: $show,
        }
    };
}

use DefaultValue::{Auto, Bool, Num, Str, Unset};

/// Every key, in the order `check-config` prints them.
#[rustfmt::skip]
pub(super) static SETTINGS: &[Setting] = &[
    setting!("amqp_url", Amqp, Mounted, AmqpUrls, Str("amqp://guest:guest@127.0.0.1:5672/%2f"),
        field: amqp.url, "the broker; a comma-separated list for a cluster's nodes"),
    setting!("jobs_queue", Amqp, File, QueueName, Str("wxdispatch.jobs"),
        field: amqp.jobs_queue, "where send jobs are consumed from"),
    setting!("jobs_queue_type", Amqp, File, Choice<QueueType>, Str("quorum"),
        field: amqp.jobs_queue_type, "quorum or classic"),
    setting!("outcomes_exchange", Amqp, File, QueueName, Str("wxdispatch.outcomes"),
        field: amqp.outcomes_exchange, "topic exchange for outcomes and receipts"),
    setting!("outcomes_queue", Amqp, File, QueueName, Str("wxdispatch.outcomes"),
        field: amqp.outcomes_queue, "durable queue bound to the outcomes exchange with #"),
    setting!("dead_queue", Amqp, File, QueueName, Str("wxdispatch.dead"),
        field: amqp.dead_queue, "jobs that can never be sent as given"),
    setting!("prefetch", Amqp, File, Whole<u16, 1, 65535>, Num(128),
        field: amqp.prefetch, "unacked deliveries per consumer"),
    setting!("delivery_limit", Amqp, File, Whole<u32, 0, { u32::MAX as i64 }>, Num(5),
        field: amqp.delivery_limit, "deliveries of one job before a quorum queue dead-letters it"),
    setting!("topology", Amqp, File, Choice<Topology>, Str("declare"),
        field: amqp.topology, "declare (the worker declares its queues) or passive (it checks them)"),

    setting!("api_base", Wechat, File, HttpBase, Str("https://api.weixin.qq.com"),
        field: wechat.api_base, "WeChat API base URL"),
    setting!("token_mode", Wechat, File, Choice<TokenMode>, Str("stable"),
        field: wechat.token_mode, "stable (POST /cgi-bin/stable_token), classic (GET /cgi-bin/token), central (WXD_TOKEN_URL) or component (a third-party platform)"),
    setting!("token_url", Wechat, File, OptHttpUrl, Unset("(unset; token_mode = central needs it)"),
        field: wechat.token_url, "the central token service: GET {url}?appid=A, and &invalid=<token> after a token error"),
    setting!("token_url_auth", Wechat, Secret, SecretText, Unset("(unset: no Authorization header)"),
        field: credentials.token_url_auth, "bearer token for the central token service (use WXD_TOKEN_URL_AUTH_FILE)"),
    setting!("component_appid", Wechat, File, OptText, Unset("(unset; token_mode = component needs it)"),
        field: wechat.component_appid, "the third-party platform's appid"),
    setting!("component_rate_per_sec", Wechat, File, Whole<u32, 1, ANY>, Num(50),
        field: wechat.component_rate_per_sec, "sends per second of an authorizer without an [[accounts]] entry (component mode)"),
    setting!("component_daily_quota", Wechat, File, OptWhole<u64>, Unset("none"),
        field: wechat.component_daily_quota, "daily quota of an authorizer without an [[accounts]] entry (component mode)"),
    setting!("component_permissions_template", Wechat, File, SetIds, Str("7"),
        field: wechat.component_permissions.template, "permission sets (any one) an authorizer must grant for type template; empty: no check (docs/TOKENS.md)"),
    setting!("component_permissions_subscribe", Wechat, File, SetIds, Str("89"),
        field: wechat.component_permissions.subscribe, "permission sets (any one) an authorizer must grant for type subscribe; empty: no check"),
    setting!("component_permissions_miniprogram_subscribe", Wechat, File, SetIds, Str("18"),
        field: wechat.component_permissions.miniprogram_subscribe, "permission sets (any one) an authorizer must grant for type miniprogram_subscribe; empty: no check"),
    setting!("component_secret", Wechat, Secret, SecretText, Unset("(unset)"),
        field: credentials.component_secret, "the third-party platform's AppSecret"),
    setting!("component_token", Wechat, Secret, SecretText, Unset("(unset)"),
        field: credentials.component_token, "the platform's message-check token (POST /wechat/component)"),
    setting!("component_aes_key", Wechat, Secret, AesKey, Unset("(unset)"),
        field: credentials.component_aes_key, "the platform's EncodingAESKey (43 characters of base64)"),
    setting!("token_force_budget", Wechat, File, Whole<u32, 0, 20>, Num(10),
        field: wechat.token_force_budget, "forced token refreshes per day (WeChat allows 20)"),
    setting!("http_timeout_ms", Wechat, File, Millis<0, ANY>, Num(5000),
        field: wechat.http_timeout, "timeout of one WeChat API call"),

    setting!("appid", Account, File, OptText, Unset("(none)"),
        single: appid, show: |c| match c.accounts.as_slice() {
            [] => None,
            accounts => Some(accounts.iter().map(|a| a.appid.as_str()).collect::<Vec<_>>().join(",")),
        }, "the account's appid"),
    setting!("secret", Account, Secret, SecretText, Unset("(per account)"),
        single: secret, show: |_| None, "AppSecret of WXD_APPID"),
    setting!("rate_per_sec", Account, File, Whole<u32, 1, ANY>, Num(50),
        single: rate_per_sec, show: |c| c.accounts.first().map(|a| a.rate_per_sec.to_string()),
        "sends per second per account (the default of [[accounts]] too)"),
    setting!("daily_quota", Account, File, OptWhole<u64>, Unset("none"),
        single: daily_quota, show: |c| c.accounts.first().and_then(|a| a.daily_quota).map(|q| q.to_string()),
        "successful sends per Beijing day"),
    setting!("original_id", Account, File, OptText, Unset("none"),
        single: original_id, show: |c| match c.accounts.as_slice() {
            [a] => a.original_id.clone(),
            _ => Some("(per account)".into()),
        }, "the account's original id (gh_…), to attribute plaintext receipts"),
    setting!("publishers", Account, File, OptNames, Unset("(anyone)"),
        single: publishers, show: |c| match c.accounts.as_slice() {
            [a] => a.publishers.as_ref().map(|p| p.join(",")),
            [] => None,
            _ => Some("(per account)".into()),
        }, "RabbitMQ users whose jobs (AMQP user_id) may send as the account, comma-separated"),

    setting!("concurrency", Limits, File, Whole<usize, 1, ANY>, Num(64),
        field: limits.concurrency, "sends in flight per process"),
    setting!("max_job_bytes", Limits, File, Whole<usize, 0, ANY>, Num(256 * 1024),
        field: limits.max_job_bytes, "largest job body accepted"),
    setting!("quota_probe_secs", Limits, File, Secs<1>, Num(600),
        field: limits.quota_probe, "while paused on quota, one probe send per this many seconds"),
    setting!("account_stop_probe_secs", Limits, File, Secs<1>, Num(300),
        field: limits.account_stop_probe, "how often a stopped account is probed"),
    setting!("redis_url", Limits, Mounted, RedisUrl, Unset("(unset: no shared limiter)"),
        field: limits.redis_url, "shares rate, quota and token across replicas"),
    setting!("expected_replicas", Limits, File, AtLeast<u32, 1>, Num(1),
        field: limits.expected_replicas, "replicas sharing the account limits without Redis"),

    setting!("max_attempts", Retry, File, Whole<u32, 1, ANY>, Num(6),
        field: retry.max_attempts, "attempts per job for transient errors"),
    setting!("retry_base_ms", Retry, File, Millis<0, ANY>, Num(200),
        field: retry.base, "first retry delay"),
    setting!("retry_max_delay_secs", Retry, File, Secs<0>, Num(60),
        field: retry.max_delay, "longest retry delay"),
    setting!("retry_budget_secs", Retry, File, Secs<0>, Num(540),
        field: retry.budget, "how long transient errors are retried"),
    setting!("inline_retry_max_ms", Retry, File, Millis<0, ANY>, Num(3000),
        field: retry.inline_max, "longer waits are deferred through the broker"),

    setting!("callback_path", Callback, File, RoutePath, Str("/wechat/callback"),
        field: callback.path, "where the callback is served"),
    setting!("callback_max_age_secs", Callback, File, Secs<0>, Num(300),
        field: callback.max_age, "older pushes are refused (replay protection)"),
    setting!("callback_addr", Callback, File, OptAddr, Unset("(unset: the callback is on WXD_HTTP_ADDR)"),
        field: callback.addr, "a listener for the callback alone"),
    setting!("callback_token", Callback, Secret, SecretText, Unset("(unset)"),
        field: credentials.callback_token, "callback token; the callback is served when it is set"),
    setting!("callback_aes_key", Callback, Secret, AesKey, Unset("(unset)"),
        field: credentials.callback_aes_key, "EncodingAESKey (43 characters of base64)"),
    setting!("callback_forward_url", Callback, File, OptHttpUrl, Unset("(unset: nothing forwarded)"),
        field: callback.forward_url, "the account's own server, sent every push the worker does not own"),
    setting!("callback_forward_owned", Callback, File, Flag, Bool(false),
        field: callback.forward_owned, "also forward receipts and subscription events"),
    setting!("callback_forward_timeout_ms", Callback, File, Millis<1, 4999>, Num(4000),
        field: callback.forward_timeout, "a forward's time limit, below WeChat's 5 s"),
    setting!("callback_publish_events", Callback, File, Flag, Bool(false),
        field: callback.publish_events, "publish other pushes as kind: event outcomes"),
    setting!("callback_publish_content", Callback, File, Flag, Bool(false),
        field: callback.publish_content, "include user message content in those events"),

    setting!("http_addr", Process, File, Addr, Str("0.0.0.0:9090"),
        field: http_addr, "/metrics, /healthz, /readyz and the callback"),
    setting!("log_format", Process, File, Choice<LogFormat>, Auto(terminal_log_format, "json (text when stderr is a terminal)"),
        field: log_format, "json or text"),
    setting!("drain_timeout_secs", Process, File, Secs<0>, Num(30),
        field: drain_timeout, "how long SIGTERM waits for in-flight sends"),
    setting!("metrics_top_accounts", Process, File, Whole<u32, 0, ANY>, Num(50),
        field: metrics_top_accounts, "authorizers with appid series of their own (the first seen); the others' are folded into appid=\"_other\""),
];

/// The key named `key`.
pub(super) fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The key whose variable is `name`.
pub(super) fn by_env(name: &str) -> Option<&'static Setting> {
    let key = name.strip_prefix("WXD_")?.to_ascii_lowercase();
    by_key(&key).filter(|s| s.env() == name)
}

fn terminal_log_format() -> Value {
    use std::io::IsTerminal;
    Value::String(
        if std::io::stderr().is_terminal() {
            "text"
        } else {
            "json"
        }
        .into(),
    )
}

impl Draft {
    /// The blank the loader starts from: every field is then set from its key's value or
    /// default, so these placeholders are never seen.
    pub(super) fn blank() -> Draft {
        Draft {
            config: Config {
                amqp: AmqpSettings::default(),
                wechat: WechatSettings::default(),
                limits: LimitSettings::default(),
                retry: RetryPolicy {
                    max_attempts: 0,
                    base: Duration::ZERO,
                    max_delay: Duration::ZERO,
                    budget: Duration::ZERO,
                    inline_max: Duration::ZERO,
                },
                callback: CallbackSettings::default(),
                accounts: Vec::new(),
                http_addr: String::new(),
                log_format: LogFormat::default(),
                drain_timeout: Duration::ZERO,
                metrics_top_accounts: 0,
                credentials: Credentials::default(),
            },
            single: SingleAccount::default(),
        }
    }
}
