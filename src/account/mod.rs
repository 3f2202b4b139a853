//! One home per account: everything the worker keeps about an account it sends for. Its pace
//! and daily quota ([`limiter`]), whether it is stopped ([`stops`]), its access token (the
//! token cache, [`token`], which fetches through a token source) and its template catalogues ([`catalogue`]), built once
//! from the configuration, and in component mode the authorizer's permission sets
//! ([`grants`]). What several replicas share about an account (the rate, the day's
//! count, the token) goes through Redis in one module, [`redis`], over one [`link`].

mod batch;
mod catalogue;
mod count;
mod gate_later;
mod grants;
mod lease;
mod limiter;
mod link;
mod redis;
mod shared;
mod stops;
pub mod token;

use std::sync::Arc;

pub use gate_later::GateLater;
use gate_later::GateRecipe;
pub use limiter::{AccountGate, Admission, GateId, Reservation};
pub use link::RedisLink;
pub use redis::SharedLimiter;
pub use stops::AccountStops;

use crate::config::{Config, ConfigError, TokenMode};
use crate::job::{AccountId, MsgType};
use crate::metrics::{AccountMetrics, Metrics, SeriesLabel, SeriesPlaces};
use crate::wechat::WechatClient;
use catalogue::CatalogueCache;
use token::{TokenCache, TokenLimits, TokenSource};

/// Everything one account needs to send.
pub struct Account {
    pub appid: String,
    pub gate: AccountGate,
    /// The mini-program subscribe messages' own daily count and quota pause: WeChat counts
    /// them apart from the account's other sends, so a spent mini-program quota must not hold
    /// back template messages (nor the other way round). Pacing stays with `gate`: the rate is
    /// the account's, whatever the type. Its metric label is `<appid>:miniprogram_subscribe`.
    /// An authorizer's is built on its first mini-program message.
    pub mp_gate: GateLater,
    pub tokens: Arc<TokenCache>,
    /// The account's template catalogues, read by every send.
    pub catalogues: CatalogueCache,
    /// Component mode: the permission sets the authorizer granted the platform.
    pub grants: Option<grants::Grants>,
    /// Whether the account is stopped by a configuration error (send or token side).
    pub stops: Arc<AccountStops>,
    /// The account's per-job metric handles.
    pub metrics: AccountMetrics,
}

impl Account {
    /// The gate that holds the daily count and the quota pause of message type `t`.
    pub(crate) fn quota_gate(&self, t: MsgType) -> &AccountGate {
        match t {
            MsgType::MiniprogramSubscribe => self.mp_gate.get(),
            MsgType::Template | MsgType::Subscribe => &self.gate,
        }
    }
}

/// The configured accounts, in the order of `Config::accounts`, which [`AccountId`] indexes,
/// and in component mode the authorizers without an `[[accounts]]` entry, built on a job's
/// first use (no restart when a merchant authorizes the platform) with the platform-wide
/// rate and quota.
pub(crate) struct Accounts {
    configured: Vec<Arc<Account>>,
    authorizers: std::sync::Mutex<std::collections::HashMap<String, Arc<Account>>>,
    builder: Builder,
}

/// What building an account takes.
struct Builder {
    config: Config,
    client: WechatClient,
    metrics: Arc<Metrics>,
    redis: Option<Arc<RedisLink>>,
    platform: Option<Arc<crate::component::Component>>,
    /// The permission sets each message type needs from an authorizer.
    permissions: Arc<crate::policy::permission::PermissionSets>,
    /// The authorizers' places among the series with an `appid` of their own.
    places: SeriesPlaces,
}

impl Builder {
    /// Builds an account; `built_now`: a configured one, whose mini-program gate (and its
    /// series) exist from the start.
    fn account(
        &self,
        appid: &str,
        label: SeriesLabel,
        (rate_per_sec, daily_quota): (u32, Option<u64>),
        built_now: bool,
    ) -> Result<Arc<Account>, ConfigError> {
        let (config, metrics) = (&self.config, &self.metrics);
        let mp = MsgType::MiniprogramSubscribe.as_str();
        let gate = |id: GateId| GateRecipe {
            id,
            rate_per_sec,
            daily_quota,
            probe_every: config.limits.quota_probe,
            metrics: metrics.clone(),
            shared: self.redis.clone(),
            expected_replicas: config.limits.expected_replicas,
        };
        let stops = Arc::new(AccountStops::labelled(&label, metrics));
        let source = token_source(config, appid, self.platform.as_ref())?;
        let tokens = TokenCache::labelled(
            appid.to_string(),
            label.clone(),
            source,
            self.client.clone(),
            metrics.clone(),
            TokenLimits {
                stop_probe: config.limits.account_stop_probe,
                force_budget: config.wechat.token_force_budget,
                shared: self.redis.clone(),
                stops: stops.clone(),
            },
        );
        Ok(Arc::new(Account {
            appid: appid.to_string(),
            mp_gate: {
                let recipe = gate(GateId {
                    id: format!("{appid}:{mp}"),
                    label: label.with_suffix(mp),
                });
                // A configured account's series exist from the start, as they always have.
                if built_now {
                    GateLater::now(recipe)
                } else {
                    GateLater::later(recipe)
                }
            },
            gate: gate(GateId {
                id: appid.to_string(),
                label: label.clone(),
            })
            .build(),
            tokens: Arc::new(tokens),
            catalogues: CatalogueCache::default(),
            grants: self
                .platform
                .as_ref()
                .map(|p| grants::Grants::new(p.clone(), appid, self.permissions.clone())),
            stops,
            metrics: metrics.init_account(&label),
        }))
    }
}

impl Accounts {
    /// Builds every account's gates, token cache and stop state. Fails when an account needs
    /// an AppSecret (stable and classic tokens) and has none, i.e. the configuration was
    /// loaded without its credentials.
    pub(crate) fn build(
        config: &Config,
        client: &WechatClient,
        metrics: &Arc<Metrics>,
    ) -> Result<Accounts, ConfigError> {
        let platform = match config.wechat.token_mode {
            TokenMode::Component => Some(Arc::new(crate::component::Component::from_config(
                config, client,
            )?)),
            _ => None,
        };
        let builder = Builder {
            config: config.clone(),
            client: client.clone(),
            metrics: metrics.clone(),
            redis: config
                .limits
                .redis_url
                .as_deref()
                .map(|url| Arc::new(RedisLink::new(url))),
            platform,
            permissions: Arc::new(config.wechat.component_permissions.clone()),
            places: SeriesPlaces::new(config.metrics_top_accounts as usize),
        };
        let configured = config
            .accounts
            .iter()
            .map(|a| {
                let label = SeriesLabel::own(&a.appid);
                builder.account(&a.appid, label, (a.rate_per_sec, a.daily_quota), true)
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Accounts {
            configured,
            authorizers: Default::default(),
            builder,
        })
    }

    /// The account a job was parsed for. A configured one is at the parser's [`AccountId`]
    /// (the account's place in the configuration these accounts were built from); an
    /// authorizer without an entry is built on first use, with the platform-wide defaults.
    pub(crate) fn get(&self, id: AccountId, appid: &str) -> Arc<Account> {
        if let Some(at) = id.index() {
            return self.configured[at].clone();
        }
        let mut authorizers = self.authorizers.lock().expect("accounts lock");
        if let Some(a) = authorizers.get(appid) {
            return a.clone();
        }
        let wechat = &self.builder.config.wechat;
        let label = self.builder.places.authorizer(appid);
        let built = self
            .builder
            .account(
                appid,
                label,
                (wechat.component_rate_per_sec, wechat.component_daily_quota),
                false,
            )
            // The parser only names authorizers in component mode, where the platform is
            // built with the configured accounts; so building one more cannot fail.
            .expect("an authorizer's account builds like the configured ones");
        authorizers.insert(appid.to_string(), built.clone());
        built
    }

    /// The account a job is for, or `None` when it names an authorizer the platform has no
    /// record of (never authorized, or unauthorized): such a job ends `not_authorized`, and
    /// neither memory nor a place among the metric series is spent on its appid. When the
    /// record cannot be read the account is built anyway, and the token fetch decides.
    pub(crate) async fn for_job(&self, id: AccountId, appid: &str) -> Option<Arc<Account>> {
        if id.index().is_some() {
            return Some(self.get(id, appid));
        }
        if let Some(a) = self.authorizers.lock().expect("accounts lock").get(appid) {
            return Some(a.clone());
        }
        let platform = self.builder.platform.as_ref()?;
        let funcs = match platform.store.authorizer_record(appid).await {
            Ok(None) => return None,
            Ok(Some(record)) => Some(record.funcs),
            Err(_) => None,
        };
        let account = self.get(id, appid);
        if let (Some(funcs), Some(grants)) = (funcs, &account.grants) {
            grants.seed(funcs);
        }
        Some(account)
    }

    /// Drops an authorizer's account once the platform says it is not authorized (the
    /// merchant unauthorized it): it is built again if the merchant authorizes again.
    /// Configured accounts stay.
    pub(crate) fn forget(&self, appid: &str) {
        self.authorizers
            .lock()
            .expect("accounts lock")
            .remove(appid);
    }

    /// The account of `appid` for a command that names it: a configured one or, in component
    /// mode, an authorizer (built now if no job used it yet). `None` for any other appid.
    pub(crate) fn named(&self, appid: &str) -> Option<Arc<Account>> {
        self.find(appid).or_else(|| {
            (self.builder.platform.is_some() && crate::job::looks_like_appid(appid))
                .then(|| self.get(AccountId::AUTHORIZER, appid))
        })
    }

    /// An account by appid: a configured one or an authorizer already in use.
    pub(crate) fn find(&self, appid: &str) -> Option<Arc<Account>> {
        self.configured
            .iter()
            .find(|a| a.appid == appid)
            .cloned()
            .or_else(|| {
                self.authorizers
                    .lock()
                    .expect("accounts lock")
                    .get(appid)
                    .cloned()
            })
    }

    /// Hands back what the gates leased of the shared schedules and adds their uncounted
    /// sends to the shared counts (with Redis): the last thing a stopping worker does.
    pub(crate) async fn close(&self) {
        for a in self.all() {
            a.gate.close().await;
            if let Some(g) = a.mp_gate.built() {
                g.close().await;
            }
        }
    }

    /// Every account in use: the configured ones, then the authorizers built so far.
    pub(crate) fn all(&self) -> Vec<Arc<Account>> {
        let mut all = self.configured.clone();
        all.extend(
            self.authorizers
                .lock()
                .expect("accounts lock")
                .values()
                .cloned(),
        );
        all
    }
}

/// Where the tokens of account `appid` come from, by the configured token mode.
fn token_source(
    config: &Config,
    appid: &str,
    platform: Option<&Arc<crate::component::Component>>,
) -> Result<TokenSource, ConfigError> {
    let secret = || {
        config
            .credentials
            .app_secret(appid)
            .cloned()
            .ok_or_else(|| ConfigError(format!("account {appid}: no AppSecret loaded")))
    };
    Ok(match config.wechat.token_mode {
        TokenMode::Stable => TokenSource::Stable { secret: secret()? },
        TokenMode::Classic => TokenSource::Classic { secret: secret()? },
        TokenMode::Component => TokenSource::Component {
            platform: platform
                .cloned()
                .ok_or_else(|| ConfigError("token_mode component: no platform".into()))?,
        },
        TokenMode::Central => {
            let url = config.wechat.token_url.as_deref().ok_or_else(|| {
                ConfigError("token_mode central: no token_url (WXD_TOKEN_URL)".into())
            })?;
            TokenSource::Central {
                url: reqwest::Url::parse(url)
                    .map_err(|e| ConfigError(format!("token_url: {e}")))?,
                auth: config.credentials.token_url_auth.clone(),
            }
        }
    })
}
