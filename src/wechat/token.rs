//! The access-token cache of one account.
//!
//! All in-flight sends share one cached token. When it is missing or about to expire, the first
//! caller refreshes it while the others wait on the same lock and then reuse the result
//! (single flight). A token that WeChat rejects is invalidated only if it is still the current
//! one (compare-and-invalidate), so a burst of failures on the same token costs one refresh.
//!
//! Two guards protect the token endpoint's daily limit:
//! - a circuit breaker: a configuration error (bad appid or secret, IP not whitelisted) stops
//!   the account; the endpoint is probed again only after `stop_probe` has passed;
//! - after a transient failure, the next fetch waits an exponentially growing pause.
//!
//! With `stable_token`, a refresh is a normal fetch first. Only if WeChat hands back the very
//! token it just rejected is a forced refresh made, and at most once per 30 seconds (WeChat
//! allows 20 a day).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Secret, TokenMode};
use crate::metrics::Metrics;
use crate::wechat::client::WechatClient;
use crate::wechat::errcode::{self, Action};

/// Minimum spacing between forced `stable_token` refreshes, as WeChat requires.
const FORCE_SPACING: Duration = Duration::from_secs(30);

/// A cached access token.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    pub fetched_at: Instant,
    pub expires_at: Instant,
}

impl Token {
    /// Fresh enough to use: not within `margin` of its expiry.
    fn usable(&self, now: Instant, margin: Duration) -> bool {
        now + margin < self.expires_at
    }
}

/// Why no token is available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// A configuration error stopped the account; sending for it waits until `retry_in`.
    #[error("account stopped by errcode {code} ({reason}); next probe in {retry_in:?}")]
    Stopped {
        code: i64,
        reason: String,
        retry_in: Duration,
    },
    /// The token endpoint failed transiently; try again after `retry_in`.
    #[error("token endpoint unavailable: {detail}; retry in {retry_in:?}")]
    Unavailable { detail: String, retry_in: Duration },
}

#[derive(Default)]
struct RefreshState {
    /// The token WeChat last rejected, to detect `stable_token` handing it back.
    last_rejected: Option<String>,
    last_forced: Option<Instant>,
    /// Circuit breaker: set by a configuration error.
    stopped: Option<(i64, Instant)>,
    /// After transient failures: no fetch before this instant.
    next_try: Option<Instant>,
    failures: u32,
}

/// One account's token cache.
pub struct TokenSource {
    appid: String,
    secret: Secret,
    mode: TokenMode,
    client: WechatClient,
    metrics: Arc<Metrics>,
    stop_probe: Duration,
    current: Mutex<Option<Arc<Token>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl TokenSource {
    pub fn new(
        appid: String,
        secret: Secret,
        mode: TokenMode,
        client: WechatClient,
        metrics: Arc<Metrics>,
        stop_probe: Duration,
    ) -> TokenSource {
        TokenSource {
            appid,
            secret,
            mode,
            client,
            metrics,
            stop_probe,
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// How close to expiry a token is no longer handed out.
    fn margin(token_life: Duration) -> Duration {
        (token_life / 10).min(Duration::from_secs(60))
    }

    fn cached(&self, now: Instant) -> Option<Arc<Token>> {
        let cur = self.current.lock().expect("token lock");
        cur.as_ref()
            .filter(|t| t.usable(now, Self::margin(t.expires_at - t.fetched_at)))
            .cloned()
    }

    /// A usable token, fetching one if needed. Concurrent callers share one fetch.
    pub async fn get(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(t) = self.cached(Instant::now()) {
            return Ok(t);
        }
        let mut st = self.refresh.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        if let Some(t) = self.cached(Instant::now()) {
            return Ok(t);
        }
        self.fetch_locked(&mut st).await
    }

    /// Marks `used` as rejected by WeChat. Only the current token is dropped: if another
    /// request already replaced it, nothing happens.
    ///
    /// The refresh lock is held across the compare, the drop and the note of the rejected
    /// value, so no fetch can slip in between and accept the rejected token as new.
    pub async fn invalidate(&self, used: &Token) {
        let mut st = self.refresh.lock().await;
        let dropped = {
            let mut cur = self.current.lock().expect("token lock");
            match cur.as_ref() {
                Some(t) if t.value == used.value => {
                    *cur = None;
                    true
                }
                _ => false,
            }
        };
        if dropped {
            tracing::info!(appid = %self.appid, "access token rejected by WeChat; refreshing");
            st.last_rejected = Some(used.value.expose().to_string());
        }
    }

    /// Refreshes in the background shortly before the token expires, so sends rarely wait.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        loop {
            let wait = {
                let cur = self.current.lock().expect("token lock").clone();
                match cur {
                    Some(t) => {
                        let life = t.expires_at - t.fetched_at;
                        // Refresh a little before `get` would stop handing it out.
                        let at = t.expires_at - Self::margin(life) * 2;
                        at.saturating_duration_since(Instant::now())
                            .max(Duration::from_secs(1))
                    }
                    None => Duration::from_secs(1),
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
            let mut st = self.refresh.lock().await;
            let now = Instant::now();
            let due = {
                let cur = self.current.lock().expect("token lock");
                match cur.as_ref() {
                    Some(t) => now + Self::margin(t.expires_at - t.fetched_at) * 2 >= t.expires_at,
                    None => false, // fetched lazily by the first send
                }
            };
            if due && let Err(e) = self.fetch_locked(&mut st).await {
                tracing::warn!(appid = %self.appid, error = %e, "background token refresh failed");
            }
            drop(st);
            self.update_gauges();
        }
    }

    /// Sets the token age and expiry gauges.
    pub fn update_gauges(&self) {
        let now = Instant::now();
        if let Some(t) = self.current.lock().expect("token lock").as_ref() {
            let a = [self.appid.as_str()];
            self.metrics
                .token_age_seconds
                .with_label_values(&a)
                .set(now.saturating_duration_since(t.fetched_at).as_secs() as i64);
            self.metrics
                .token_expires_in_seconds
                .with_label_values(&a)
                .set(t.expires_at.saturating_duration_since(now).as_secs() as i64);
        }
    }

    async fn fetch_locked(&self, st: &mut RefreshState) -> Result<Arc<Token>, TokenError> {
        let now = Instant::now();
        if let Some((code, until)) = st.stopped {
            if now < until {
                return Err(TokenError::Stopped {
                    code,
                    reason: errcode::reason(code).into_owned(),
                    retry_in: until - now,
                });
            }
            tracing::info!(appid = %self.appid, code, "probing the token endpoint of a stopped account");
        }
        if let Some(next) = st.next_try
            && now < next
        {
            return Err(TokenError::Unavailable {
                detail: "backing off after a failed fetch".into(),
                retry_in: next - now,
            });
        }
        let mut reply = self.call(st, false).await?;
        if self.mode == TokenMode::Stable
            && st.last_rejected.is_some()
            && reply.access_token == st.last_rejected
        {
            // stable_token handed back the token WeChat just rejected: force a new one, but
            // never more often than WeChat allows.
            if st
                .last_forced
                .is_some_and(|t| now.duration_since(t) < FORCE_SPACING)
            {
                let retry_in = FORCE_SPACING - now.duration_since(st.last_forced.unwrap());
                // Every caller would get the same rejected token back: hold them all off the
                // endpoint until a forced refresh is allowed again.
                st.next_try = Some(now + retry_in);
                return Err(TokenError::Unavailable {
                    detail: "stable token still rejected; waiting to force a refresh".into(),
                    retry_in,
                });
            }
            st.last_forced = Some(now);
            tracing::warn!(appid = %self.appid, "stable token was rejected; forcing a refresh");
            reply = self.call(st, true).await?;
        }
        let (Some(value), Some(expires_in)) = (reply.access_token, reply.expires_in) else {
            return Err(self.transient(st, "reply without access_token".into()));
        };
        st.last_rejected = None;
        st.failures = 0;
        st.next_try = None;
        if st.stopped.take().is_some() {
            self.metrics
                .account_stopped
                .with_label_values(&[&self.appid])
                .set(0);
            tracing::info!(appid = %self.appid, "token endpoint accepts the account again; resuming");
        }
        let now = Instant::now();
        let token = Arc::new(Token {
            value: Secret::new(value),
            fetched_at: now,
            expires_at: now + Duration::from_secs(expires_in.max(1)),
        });
        *self.current.lock().expect("token lock") = Some(token.clone());
        self.update_gauges();
        Ok(token)
    }

    async fn call(
        &self,
        st: &mut RefreshState,
        force: bool,
    ) -> Result<crate::wechat::ApiReply, TokenError> {
        let result = self
            .client
            .fetch_token(self.mode, &self.appid, &self.secret, force)
            .await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                self.count("error");
                return Err(self.transient(st, e.to_string()));
            }
        };
        if reply.errcode == 0 {
            self.count(if force { "forced" } else { "ok" });
            return Ok(reply);
        }
        let code = reply.errcode;
        match errcode::token_endpoint_action(code) {
            Action::StopAccount | Action::PauseQuota => {
                let quota = errcode::token_endpoint_action(code) == Action::PauseQuota;
                let hold = if quota {
                    // The token endpoint's own daily limit: wait for it to reset.
                    crate::limiter::until_beijing_midnight().min(self.stop_probe * 12)
                } else {
                    self.stop_probe
                };
                st.stopped = Some((code, Instant::now() + hold));
                self.metrics
                    .account_stopped
                    .with_label_values(&[&self.appid])
                    .set(1);
                if quota {
                    self.count("quota");
                    tracing::error!(
                        appid = %self.appid,
                        errcode = code,
                        errmsg = %reply.errmsg,
                        "token endpoint's daily call limit reached; account STOPPED until it \
                         resets (next probe in {}s). Something is fetching tokens far too often.",
                        hold.as_secs()
                    );
                } else {
                    self.count("config_error");
                    tracing::error!(
                        appid = %self.appid,
                        errcode = code,
                        reason = %errcode::reason(code),
                        errmsg = %reply.errmsg,
                        "token endpoint refused the account's credentials; account STOPPED until \
                         the configuration is fixed (next probe in {}s)",
                        hold.as_secs()
                    );
                }
                Err(TokenError::Stopped {
                    code,
                    reason: errcode::reason(code).into_owned(),
                    retry_in: hold,
                })
            }
            _ => {
                self.count("error");
                Err(self.transient(st, format!("errcode {code}: {}", reply.errmsg)))
            }
        }
    }

    fn transient(&self, st: &mut RefreshState, detail: String) -> TokenError {
        st.failures = st.failures.saturating_add(1);
        let pause = Duration::from_millis(500) * 2u32.saturating_pow(st.failures.min(7));
        let pause = pause.min(Duration::from_secs(60));
        st.next_try = Some(Instant::now() + pause);
        tracing::warn!(appid = %self.appid, %detail, "token fetch failed");
        TokenError::Unavailable {
            detail,
            retry_in: pause,
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .token_refreshes_total
            .with_label_values(&[&self.appid, result])
            .inc();
    }
}
