//! One home per account: everything the worker keeps about an account it sends for. Its pace
//! and daily quota ([`limiter`]), whether it is stopped ([`stops`]), its access token (the
//! token cache in [`crate::wechat`]) and its template catalogues ([`catalogue`]), built once
//! from the configuration. What several replicas share about an account (the rate, the day's
//! count, the token) goes through Redis in one module, [`redis`].

pub mod catalogue;
pub mod lease;
pub mod limiter;
pub mod redis;
mod shared;
pub mod stops;

use std::sync::Arc;

pub use limiter::{AccountGate, Admission, Reservation};
pub use stops::AccountStops;

use crate::config::{Config, ConfigError};
use crate::job::{AccountId, MsgType};
use crate::metrics::{AccountMetrics, Metrics};
use crate::wechat::{TokenLimits, TokenSource, WechatClient};
use catalogue::CatalogueCache;
use redis::RedisLink;

/// Everything one account needs to send.
pub struct Account {
    pub appid: String,
    pub gate: AccountGate,
    /// The mini-program subscribe messages' own daily count and quota pause: WeChat counts
    /// them apart from the account's other sends, so a spent mini-program quota must not hold
    /// back template messages (nor the other way round). Pacing stays with `gate`: the rate is
    /// the account's, whatever the type. Its metric label is `<appid>:miniprogram_subscribe`.
    pub mp_gate: AccountGate,
    pub tokens: Arc<TokenSource>,
    /// The account's template catalogues, read by every send.
    pub catalogues: CatalogueCache,
    /// Whether the account is stopped by a configuration error (send or token side).
    pub stops: Arc<AccountStops>,
    /// The account's per-job metric handles.
    pub metrics: AccountMetrics,
}

impl Account {
    /// The gate that holds the daily count and the quota pause of message type `t`.
    pub(crate) fn quota_gate(&self, t: MsgType) -> &AccountGate {
        match t {
            MsgType::MiniprogramSubscribe => &self.mp_gate,
            MsgType::Template | MsgType::Subscribe => &self.gate,
        }
    }
}

/// The configured accounts, in the order of `Config::accounts`, which [`AccountId`] indexes.
pub(crate) struct Accounts(Vec<Arc<Account>>);

impl Accounts {
    /// Builds every account's gates, token source and stop state. Fails when an account has
    /// no AppSecret, i.e. the configuration was loaded without its credentials.
    pub(crate) fn build(
        config: &Config,
        client: &WechatClient,
        metrics: &Arc<Metrics>,
    ) -> Result<Accounts, ConfigError> {
        let redis = config
            .limits
            .redis_url
            .as_deref()
            .map(|url| Arc::new(RedisLink::new(url)));
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                let secret = config.credentials.app_secret(&a.appid).ok_or_else(|| {
                    ConfigError(format!("account {}: no AppSecret loaded", a.appid))
                })?;
                let mp_id = format!("{}:{}", a.appid, MsgType::MiniprogramSubscribe);
                let gate = |id: &str| {
                    AccountGate::with_shared(
                        id,
                        a.rate_per_sec,
                        a.daily_quota,
                        config.limits.quota_probe,
                        metrics.clone(),
                        redis.clone(),
                        config.limits.expected_replicas,
                    )
                };
                let stops = Arc::new(AccountStops::new(&a.appid, metrics));
                let tokens = TokenSource::new(
                    a.appid.clone(),
                    secret.clone(),
                    config.wechat.token_mode,
                    client.clone(),
                    metrics.clone(),
                    TokenLimits {
                        stop_probe: config.limits.account_stop_probe,
                        force_budget: config.wechat.token_force_budget,
                        shared: redis.clone(),
                        stops: stops.clone(),
                    },
                );
                Ok(Arc::new(Account {
                    appid: a.appid.clone(),
                    mp_gate: gate(&mp_id),
                    gate: gate(&a.appid),
                    tokens: Arc::new(tokens),
                    catalogues: CatalogueCache::default(),
                    stops,
                    metrics: metrics.init_account(&a.appid),
                }))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Accounts(accounts))
    }

    /// The account a job was parsed for. The parser's [`AccountId`] is the account's place in
    /// the configuration these accounts were built from, so it is always there.
    pub(crate) fn get(&self, id: AccountId) -> &Account {
        &self.0[id.index()]
    }

    /// A configured account by appid (a handful: a scan is cheaper than hashing).
    pub(crate) fn find(&self, appid: &str) -> Option<&Account> {
        self.0.iter().find(|a| a.appid == appid).map(|a| &**a)
    }

    /// Hands back what the gates leased of the shared schedules and adds their uncounted
    /// sends to the shared counts (with Redis): the last thing a stopping worker does.
    pub(crate) async fn close(&self) {
        for a in &self.0 {
            a.gate.close().await;
            a.mp_gate.close().await;
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.0.iter()
    }
}
