//! Third-party platform ("component") mode: the platform's own endpoints ([`api`]), what it
//! keeps in Redis ([`store`]), its tokens with the refresh-token rotation under a lock
//! ([`tokens`]), refreshed ahead of their expiry ([`freshness`]) and its authorization pushes
//! ([`push`]).
//!
//! With `token_mode = component` every account is an authorizer (configured or, built on its
//! first job, not) whose token comes from [`Component::token_reply`], and the pushes are served at `/wechat/component` ([`http`]),
//! each authorization push published as a `kind: authorization` outcome before it is answered.

pub mod api;
pub mod freshness;
pub mod http;
pub mod push;
pub mod store;
pub mod tokens;

pub use push::{AuthEvent, Push, PushError, PushQuery};
pub use tokens::{Component, ComponentError};

use crate::config::{Config, ConfigError};
use crate::wechat::{ApiReply, Ask, SendError, SharedLife, WechatClient};

/// WeChat's "this account has not authorized the platform": what an authorizer's token
/// source answers for an appid without an authorization, which the token cache turns into
/// `not_authorized`.
pub const NOT_AUTHORIZED: i64 = 61003;

impl Component {
    /// The platform of a `token_mode = component` configuration (its Redis connects on first
    /// use).
    pub fn from_config(config: &Config, client: &WechatClient) -> Result<Component, ConfigError> {
        let missing = |what: &str| ConfigError(format!("token_mode component: no {what}"));
        let appid = config
            .wechat
            .component_appid
            .clone()
            .ok_or_else(|| missing("component_appid"))?;
        let url = config
            .limits
            .redis_url
            .as_deref()
            .ok_or_else(|| missing("redis_url"))?;
        Ok(Component {
            store: store::ComponentStore::new(url, &appid)
                .map_err(|e| ConfigError(format!("redis_url: {e}")))?,
            api: api::ComponentApi {
                client: client.clone(),
                appid,
                secret: config
                    .credentials
                    .component_secret
                    .clone()
                    .ok_or_else(|| missing("component_secret"))?,
            },
        })
    }

    /// An authorizer's token in the shape of a token endpoint's reply, for the account's token
    /// cache: a refused token is dropped from Redis first (if it is still the stored one), an
    /// appid without an authorization answers [`NOT_AUTHORIZED`], WeChat's errors pass through,
    /// and Redis or a busy lock is a transient failure.
    pub async fn token_reply(&self, appid: &str, ask: Ask<'_>) -> Result<ApiReply, SendError> {
        let unavailable = |e: &dyn std::fmt::Display| SendError::Connect(e.to_string());
        if let Ask::Refused(token) = ask {
            self.store
                .drop_authorizer_token(appid, token)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        match self.authorizer_token(appid).await {
            Ok(t) => {
                let now = chrono::Utc::now().timestamp_millis();
                let left = t.expires_ms - now;
                Ok(ApiReply {
                    expires_in: Some((left.max(1000) / 1000) as u64),
                    shared_life: Some(SharedLife {
                        expires_in_ms: left.max(1) as u64,
                        refresh_in_ms: (t.refresh_at_ms() - now).max(0) as u64,
                    }),
                    access_token: Some(t.value),
                    ..ApiReply::default()
                })
            }
            Err(ComponentError::NotAuthorized(_)) => Ok(ApiReply {
                errcode: NOT_AUTHORIZED,
                errmsg: "not authorized by this account".into(),
                ..ApiReply::default()
            }),
            Err(ComponentError::Wechat { code, msg }) => Ok(ApiReply {
                errcode: code,
                errmsg: msg,
                ..ApiReply::default()
            }),
            Err(ComponentError::Http(e)) => Err(e),
            Err(e) => Err(unavailable(&e)),
        }
    }
}
