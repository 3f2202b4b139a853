//! The platform's tokens: the component token (from the last verify ticket) and each
//! authorizer's access token (from its refresh token). Both are kept in Redis and fetched by
//! one replica at a time under a lock that expires by itself. Every `api_authorizer_token`
//! call rotates the refresh token: the new one is stored with the access token in one
//! transaction, so a replica never refreshes with a spent one.
//!
//! A token in its refresh window ([`super::freshness`]) is refreshed ahead by the replica that
//! takes the lock, while every caller, that replica's included when the refresh fails, is
//! handed the still-valid one: nobody waits on the lock. Only a missing or spent token makes
//! callers wait for the replica that refreshes it.

use std::time::{Duration, Instant};

use super::api::{Answer, ComponentApi};
use super::freshness::Freshness;
use super::store::{AuthorizerRecord, ComponentStore, StoredToken};
use crate::wechat::SendError;

/// How long a fetch lock is held at most, should its holder die: more than the calls it
/// guards (the component token's and the authorizer's, each up to the 5 s HTTP timeout), so a
/// slow refresh is never joined by a second one with the same refresh token.
const LOCK_HOLD: Duration = Duration::from_secs(30);
/// How long a replica waits for another one's fetch before giving up for now.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(5);

/// WeChat: the component verify ticket is invalid.
pub const INVALID_TICKET: i64 = 61006;
/// WeChat: the authorizer refresh token is invalid (lost, or rotated by someone else).
pub const INVALID_REFRESH_TOKEN: i64 = 61023;

impl<T> Answer<T> {
    /// The answer's body when WeChat said `errcode` 0, else its code and message as an error.
    fn into_body(self) -> Result<T, ComponentError> {
        match self.body {
            Some(body) if self.errcode == 0 => Ok(body),
            _ => Err(ComponentError::Wechat {
                code: self.errcode,
                msg: self.errmsg,
            }),
        }
    }
}

/// Why a token of the platform could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("no component_verify_ticket has arrived yet")]
    NoTicket,
    /// The appid never authorized the platform, or has unauthorized it.
    #[error("{0} has not authorized the platform")]
    NotAuthorized(String),
    #[error("errcode {code}: {msg}")]
    Wechat { code: i64, msg: String },
    #[error("{0}")]
    Http(#[from] SendError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("another replica is fetching the token")]
    Busy,
}

/// A third-party platform: its API and its Redis keys.
pub struct Component {
    pub api: ComponentApi,
    pub store: ComponentStore,
}

impl Component {
    /// The component access token: the stored one, refreshed ahead of its expiry by the
    /// replica that takes the lock, fetched with the stored verify ticket when none is usable.
    pub async fn component_token(&self) -> Result<String, ComponentError> {
        let started = Instant::now();
        loop {
            let stored = self.store.component_token().await?;
            let freshness = stored.as_ref().map_or(Freshness::Spent, |t| t.freshness());
            match (stored, freshness) {
                (Some(t), Freshness::Fresh) => return Ok(t.value),
                (Some(t), Freshness::Ahead) => {
                    if !self.store.lock("token", LOCK_HOLD).await? {
                        return Ok(t.value);
                    }
                    return match self.fetch_component_token().await {
                        Ok(new) => Ok(new),
                        Err(e) => {
                            self.store.unlock("token").await?;
                            tracing::warn!(error = %e, "refreshing the component token ahead of its expiry failed; using the current one");
                            Ok(t.value)
                        }
                    };
                }
                _ => {}
            }
            if self.store.lock("token", LOCK_HOLD).await? {
                let fetched = self.fetch_component_token().await;
                if fetched.is_err() {
                    self.store.unlock("token").await?;
                }
                return fetched;
            }
            if started.elapsed() > WAIT_FOR_OTHER {
                return Err(ComponentError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Under the lock: `api_component_token` with the last ticket pushed; if WeChat refuses it (61006), with
    /// the last one it took, which stays valid for 12 hours. The ticket that worked is kept as
    /// the good one.
    async fn fetch_component_token(&self) -> Result<String, ComponentError> {
        // Another replica may have stored a token between our read and our lock.
        if let Some(t) = self.store.component_token().await?
            && t.freshness() == Freshness::Fresh
        {
            self.store.unlock("token").await?;
            return Ok(t.value);
        }
        let ticket = self.store.ticket().await?.ok_or(ComponentError::NoTicket)?;
        let (token, ticket) = match self.component_token_with(&ticket).await {
            Err(ComponentError::Wechat { code, msg }) if code == INVALID_TICKET => {
                match self.store.good_ticket().await? {
                    Some(good) if good != ticket => {
                        tracing::warn!(errmsg = %msg, "WeChat refused the last verify ticket pushed (61006); using the last one it took");
                        (self.component_token_with(&good).await?, good)
                    }
                    _ => return Err(ComponentError::Wechat { code, msg }),
                }
            }
            other => (other?, ticket),
        };
        self.store.store_component_token(&token, &ticket).await?;
        Ok(token.value)
    }

    async fn component_token_with(&self, ticket: &str) -> Result<StoredToken, ComponentError> {
        let token = self.api.component_token(ticket).await?.into_body()?;
        Ok(StoredToken::issued_now(
            token.component_access_token,
            token.expires_in,
        ))
    }

    /// `authorized` / `updateauthorized`: the code is exchanged at once and the authorizer's
    /// refresh token, permission sets and access token are stored. Returns the permission sets.
    pub async fn authorize(&self, code: &str) -> Result<(String, Vec<u32>), ComponentError> {
        let ctoken = self.component_token().await?;
        let answer = self.api.query_auth(&ctoken, code).await?;
        let info = answer.into_body()?.authorization_info;
        let funcs: Vec<u32> = info
            .func_info
            .iter()
            .map(|f| f.funcscope_category.id)
            .collect();
        let record = AuthorizerRecord {
            refresh_token: Some(info.authorizer_refresh_token),
            funcs: funcs.clone(),
        };
        let token = StoredToken::issued_now(info.authorizer_access_token, info.expires_in);
        self.store
            .store_authorizer(&info.authorizer_appid, &record, Some(&token))
            .await?;
        Ok((info.authorizer_appid, funcs))
    }

    /// The authorizer's record, or `NotAuthorized`.
    pub async fn record(&self, appid: &str) -> Result<AuthorizerRecord, ComponentError> {
        self.store
            .authorizer_record(appid)
            .await?
            .ok_or_else(|| ComponentError::NotAuthorized(appid.to_string()))
    }

    /// Authorizer `appid`'s access token: the stored one while it is fresh; in its refresh
    /// window the stored one too, after the replica that takes the lock has refreshed it (the
    /// others do not wait); else a refresh by exactly one replica, which the others wait for.
    pub async fn authorizer_token(&self, appid: &str) -> Result<StoredToken, ComponentError> {
        let started = Instant::now();
        let lock = ComponentStore::authorizer_lock(appid);
        loop {
            let stored = self.store.authorizer_token(appid).await?;
            let freshness = stored.as_ref().map_or(Freshness::Spent, |t| t.freshness());
            match (stored, freshness) {
                (Some(t), Freshness::Fresh) => return Ok(t),
                (Some(t), Freshness::Ahead) => return self.refresh_ahead(appid, t).await,
                _ => {}
            }
            let record = self.record(appid).await?;
            if self.store.lock(&lock, LOCK_HOLD).await? {
                let refreshed = self.refresh_authorizer(appid, record).await;
                if refreshed.is_err() {
                    self.store.unlock(&lock).await?;
                }
                return refreshed;
            }
            if started.elapsed() > WAIT_FOR_OTHER {
                return Err(ComponentError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A still-valid token in its refresh window: refreshed if this replica takes the lock,
    /// else (another replica is at it) handed out as it is; also when the refresh fails, which
    /// the next caller in the window tries again.
    async fn refresh_ahead(
        &self,
        appid: &str,
        current: StoredToken,
    ) -> Result<StoredToken, ComponentError> {
        let lock = ComponentStore::authorizer_lock(appid);
        if !self.store.lock(&lock, LOCK_HOLD).await? {
            return Ok(current);
        }
        let refreshed = match self.record(appid).await {
            Ok(record) => self.refresh_authorizer(appid, record).await,
            Err(e) => Err(e),
        };
        match refreshed {
            Ok(t) => Ok(t),
            Err(ComponentError::NotAuthorized(a)) => {
                self.store.unlock(&lock).await?;
                Err(ComponentError::NotAuthorized(a))
            }
            Err(e) => {
                self.store.unlock(&lock).await?;
                tracing::warn!(authorizer = %appid, error = %e, "refreshing an authorizer token ahead of its expiry failed; using the current one");
                Ok(current)
            }
        }
    }

    /// Under the authorizer's lock: refresh with the stored refresh token (recovered from the
    /// authorizer list when it is missing or WeChat says it is invalid), and store the rotation.
    async fn refresh_authorizer(
        &self,
        appid: &str,
        record: AuthorizerRecord,
    ) -> Result<StoredToken, ComponentError> {
        // Another replica may have stored a token between our read and our lock.
        if let Some(t) = self.store.authorizer_token(appid).await?
            && t.freshness() == Freshness::Fresh
        {
            self.store
                .unlock(&ComponentStore::authorizer_lock(appid))
                .await?;
            return Ok(t);
        }
        let ctoken = self.component_token().await?;
        let mut refresh = match record.refresh_token {
            Some(r) => r,
            None => self.recover_refresh_token(&ctoken, appid).await?,
        };
        let mut recovered = false;
        loop {
            let answer = self.api.authorizer_token(&ctoken, appid, &refresh).await?;
            match answer.body {
                Some(t) if answer.errcode == 0 => {
                    let token = StoredToken::issued_now(t.authorizer_access_token, t.expires_in);
                    self.store
                        .store_rotation(appid, &t.authorizer_refresh_token, &token)
                        .await?;
                    return Ok(token);
                }
                _ if answer.errcode == INVALID_REFRESH_TOKEN && !recovered => {
                    tracing::warn!(authorizer = %appid, "the stored refresh token is invalid; recovering it from the authorizer list");
                    refresh = self.recover_refresh_token(&ctoken, appid).await?;
                    recovered = true;
                }
                _ => {
                    return Err(ComponentError::Wechat {
                        code: answer.errcode,
                        msg: answer.errmsg,
                    });
                }
            }
        }
    }

    /// The refresh token of `appid` from `api_get_authorizer_list`, stored; `NotAuthorized`
    /// when the list does not have it.
    async fn recover_refresh_token(
        &self,
        ctoken: &str,
        appid: &str,
    ) -> Result<String, ComponentError> {
        let mut offset = 0;
        loop {
            let answer = self.api.authorizer_list(ctoken, offset).await?;
            let page = answer.into_body()?;
            if let Some(found) = page.list.iter().find(|a| a.authorizer_appid == appid) {
                let funcs = self
                    .store
                    .authorizer_record(appid)
                    .await?
                    .map(|r| r.funcs)
                    .unwrap_or_default();
                let record = AuthorizerRecord {
                    refresh_token: Some(found.refresh_token.clone()),
                    funcs,
                };
                self.store.store_authorizer(appid, &record, None).await?;
                return Ok(found.refresh_token.clone());
            }
            offset += page.list.len() as u64;
            if page.list.is_empty() || offset >= page.total_count {
                return Err(ComponentError::NotAuthorized(appid.to_string()));
            }
        }
    }
}
