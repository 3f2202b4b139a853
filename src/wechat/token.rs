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
//! With `stable_token`, a refresh after a rejection is a normal fetch first. A forced refresh
//! is rare and rationed, because WeChat allows 20 a day (Beijing time) with 30 s between them,
//! and each one also invalidates the token for every other service using the appid:
//! - it is made only when a token error follows a *fresh* token, one the endpoint confirmed
//!   within the last minute, and the endpoint then hands that same token back. A token error
//!   on a token WeChat has just vouched for is the one case a new token may fix;
//! - never when the rejected token was itself forced: a brand-new token that is still
//!   refused means the code is not about the token (41006, which today's tables call
//!   "missing media_id", is the usual culprit), so forcing again would only burn the budget;
//! - only from a daily budget (`token_force_budget`, default 10, well under WeChat's 20 so
//!   other systems keep some), with the 30 s spacing, both shared by all replicas through
//!   Redis when it is configured.
//!
//! When no force is allowed the same token is handed out again and the job goes down its
//! ordinary backoff path: a storm of token errors never stops a healthy account.
//!
//! The classic endpoint issues a new token on every call (and invalidates the previous one
//! after five minutes), so there a rejection of a fresh token is not followed by another
//! fetch either: it would cost one of the 2,000 daily calls and could not help.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account::redis::{ForceGrant, RedisLink};
use crate::config::{Secret, TokenMode};
use crate::metrics::Metrics;
use crate::wechat::client::WechatClient;
use crate::wechat::errcode::{self, Action};

/// Minimum spacing between forced `stable_token` refreshes, as WeChat requires.
const FORCE_SPACING: Duration = Duration::from_secs(30);
/// How long after the endpoint handed out (or confirmed) a token it counts as fresh.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// A cached access token.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    pub fetched_at: Instant,
    pub expires_at: Instant,
    /// The last time the token endpoint handed out this token.
    pub confirmed_at: Instant,
    /// Whether it came from a forced refresh.
    pub forced: bool,
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

/// Why the shared classic token could not be had.
enum SharedFetch {
    /// The token endpoint failed: the ordinary token rules apply.
    Endpoint(TokenError),
    /// Redis failed: fall back to a token of this replica's own.
    Redis(redis::RedisError),
}

impl From<redis::RedisError> for SharedFetch {
    fn from(e: redis::RedisError) -> Self {
        SharedFetch::Redis(e)
    }
}

/// A token WeChat rejected on a send.
struct Rejected {
    value: String,
    /// The endpoint had confirmed it within [`FRESH_FOR`] of the rejection.
    fresh: bool,
    /// It came from a forced refresh.
    forced: bool,
}

#[derive(Default)]
struct RefreshState {
    /// The token WeChat last rejected, to detect `stable_token` handing it back.
    last_rejected: Option<Rejected>,
    /// This process' view of the forced-refresh budget (the only one without Redis).
    forces: LocalForces,
    /// Circuit breaker: set by a configuration error.
    stopped: Option<(i64, Instant)>,
    /// After transient failures: no fetch before this instant.
    next_try: Option<Instant>,
    failures: u32,
}

/// Forced refreshes taken on one Beijing day, and the last one.
#[derive(Default)]
struct LocalForces {
    day: Option<chrono::NaiveDate>,
    used: u32,
    last: Option<Instant>,
}

impl LocalForces {
    fn take(&mut self, per_day: u32, now: Instant) -> ForceGrant {
        let today = crate::account::limiter::beijing_today();
        if self.day != Some(today) {
            *self = LocalForces {
                day: Some(today),
                used: 0,
                last: self.last,
            };
        }
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < FORCE_SPACING)
        {
            return ForceGrant::TooSoon;
        }
        if self.used >= per_day {
            return ForceGrant::Spent;
        }
        self.used += 1;
        self.last = Some(now);
        ForceGrant::Granted(self.used)
    }

    /// WeChat itself said the day's forced refreshes are gone (45009 on a forced call).
    fn exhaust(&mut self, per_day: u32) {
        self.day = Some(crate::account::limiter::beijing_today());
        self.used = self.used.max(per_day);
    }
}

/// How a token cache guards the token endpoint's limits.
#[derive(Clone)]
pub struct TokenLimits {
    /// After a configuration error, the endpoint is probed again only after this.
    pub stop_probe: Duration,
    /// Forced `stable_token` refreshes allowed per Beijing day.
    pub force_budget: u32,
    /// Redis, to share the force budget and spacing with the other replicas.
    pub shared: Option<Arc<RedisLink>>,
    /// The account's stop state, shared with the send side; the token side reports its
    /// circuit breaker there, and it alone writes the gauge.
    pub stops: Arc<crate::account::AccountStops>,
}

/// One account's token cache.
pub struct TokenSource {
    appid: String,
    secret: Secret,
    mode: TokenMode,
    client: WechatClient,
    metrics: Arc<Metrics>,
    stop_probe: Duration,
    /// Forced `stable_token` refreshes allowed per Beijing day.
    force_budget: u32,
    /// Redis, to share the force budget and spacing with the other replicas.
    shared: Option<Arc<RedisLink>>,
    /// Where the token side's stop is reported (the one writer of the stopped gauge).
    stops: Arc<crate::account::AccountStops>,
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
        limits: TokenLimits,
    ) -> TokenSource {
        let TokenLimits {
            stop_probe,
            force_budget,
            shared,
            stops,
        } = limits;
        metrics
            .token_force_budget_remaining
            .with_label_values(&[&appid])
            .set(i64::from(force_budget));
        TokenSource {
            appid,
            secret,
            mode,
            client,
            metrics,
            stop_probe,
            force_budget,
            shared,
            stops,
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
        let fresh = used.confirmed_at.elapsed() < FRESH_FOR;
        if self.mode == TokenMode::Classic && fresh {
            // A token the classic endpoint issued moments ago is as new as any it could issue
            // now: another fetch would spend a daily call and invalidate other replicas'
            // tokens, and could not help. The job backs off instead.
            tracing::info!(appid = %self.appid, "a fresh access token was rejected; not fetching another (the code is likely not about the token)");
            self.skipped("fresh_classic_token");
            return;
        }
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
            tracing::info!(appid = %self.appid, fresh, forced = used.forced, "access token rejected by WeChat; refreshing");
            st.last_rejected = Some(Rejected {
                value: used.value.expose().to_string(),
                fresh,
                forced: used.forced,
            });
        }
    }

    /// Takes a forced refresh from the budget: Redis's when it is configured and answers,
    /// this process' own otherwise.
    async fn take_force(&self, st: &mut RefreshState) -> ForceGrant {
        let now = Instant::now();
        let grant = match self.shared_force().await {
            Some(g) => g,
            None => st.forces.take(self.force_budget, now),
        };
        if let ForceGrant::Granted(n) = grant {
            self.metrics
                .token_force_budget_remaining
                .with_label_values(&[&self.appid])
                .set(i64::from(self.force_budget.saturating_sub(n)));
        }
        grant
    }

    async fn shared_force(&self) -> Option<ForceGrant> {
        let slot = self.shared.as_ref()?;
        let limiter = slot.get().await?;
        let day = crate::account::limiter::beijing_today().to_string();
        match limiter
            .take_force(&self.appid, &day, self.force_budget, FORCE_SPACING)
            .await
        {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(appid = %self.appid, error = %e, "Redis unreachable for the forced-refresh budget; using this replica's own");
                slot.failed().await;
                None
            }
        }
    }

    fn skipped(&self, reason: &str) {
        self.metrics
            .token_force_skipped_total
            .with_label_values(&[&self.appid, reason])
            .inc();
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
        if self.mode == TokenMode::Classic
            && let Some(slot) = &self.shared
            && let Some(limiter) = slot.get().await
        {
            match self.classic_shared(&limiter, st).await {
                Ok(token) => return Ok(token),
                Err(SharedFetch::Endpoint(e)) => return Err(e),
                Err(SharedFetch::Redis(e)) => {
                    tracing::warn!(appid = %self.appid, error = %e, "Redis unreachable for the shared classic token; fetching one for this replica alone");
                    slot.failed().await;
                }
            }
        }
        let mut reply = self.call(st).await?;
        let mut forced = false;
        let handed_back = st.last_rejected.as_ref().filter(|r| {
            self.mode == TokenMode::Stable && reply.access_token.as_deref() == Some(&r.value)
        });
        if let Some(rejected) = handed_back {
            // stable_token handed back the token WeChat just rejected.
            if rejected.forced {
                tracing::info!(appid = %self.appid, "a forced token was rejected too; the error is not about the token, so no further forced refresh");
                self.skipped("forced_token_rejected");
            } else if !rejected.fresh {
                // The first rejection of a token the endpoint has not vouched for lately: take
                // the endpoint's word that it is current and let the job retry after backoff.
                // If WeChat refuses it again, it is fresh then, and a forced refresh may help.
            } else {
                match self.take_force(st).await {
                    ForceGrant::Granted(n) => {
                        tracing::warn!(appid = %self.appid, forced_today = n, budget = self.force_budget, "a fresh stable token was rejected; forcing a refresh");
                        if let Some(r) = self.call_forced(st).await {
                            reply = r;
                            forced = true;
                        }
                    }
                    ForceGrant::TooSoon => self.skipped("too_soon"),
                    ForceGrant::Spent => {
                        tracing::warn!(appid = %self.appid, budget = self.force_budget, "today's forced-refresh budget is spent; using the current token and backing off");
                        self.skipped("budget_spent");
                    }
                }
            }
        }
        let (Some(value), Some(expires_in)) = (reply.access_token, reply.expires_in) else {
            // interpret() lets no such reply through; stay graceful all the same.
            return Err(self.transient(st, "reply without access_token".into()));
        };
        let now = Instant::now();
        let expires_at = now + Duration::from_secs(expires_in.max(1));
        Ok(self.install(st, value, now, expires_at, forced))
    }

    /// Makes a token obtained from the endpoint (or from the other replicas) the current one,
    /// and clears the failure and stop state.
    fn install(
        &self,
        st: &mut RefreshState,
        value: String,
        fetched_at: Instant,
        expires_at: Instant,
        forced: bool,
    ) -> Arc<Token> {
        st.last_rejected = None;
        st.failures = 0;
        st.next_try = None;
        if st.stopped.take().is_some() {
            self.stops.set_token_stopped(false);
            tracing::info!(appid = %self.appid, "token endpoint accepts the account again; resuming");
        }
        let token = Arc::new(Token {
            value: Secret::new(value),
            fetched_at,
            expires_at,
            confirmed_at: fetched_at,
            forced,
        });
        *self.current.lock().expect("token lock") = Some(token.clone());
        self.update_gauges();
        token
    }

    /// The classic token shared by all replicas through Redis, the way WxJava's Redis config
    /// storage does it: use the stored token unless it is the one just rejected or about to
    /// expire; otherwise one replica (holding a lock that expires by itself) fetches a new one
    /// and stores it, while the others wait for it. Every classic fetch invalidates the
    /// previous token after five minutes, so replicas fetching on their own would keep
    /// killing each other's tokens.
    async fn classic_shared(
        &self,
        limiter: &crate::account::redis::SharedLimiter,
        st: &mut RefreshState,
    ) -> Result<Arc<Token>, SharedFetch> {
        const LOCK_HOLD: Duration = Duration::from_secs(10);
        const WAIT_FOR_OTHER: Duration = Duration::from_secs(5);
        let rejected = st.last_rejected.as_ref().map(|r| r.value.clone());
        let started = Instant::now();
        loop {
            if let Some(t) = limiter.shared_token(&self.appid).await? {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let left = Duration::from_millis((t.expires_ms - now_ms).max(0) as u64);
                let life = Duration::from_millis((t.expires_ms - t.fetched_ms).max(1) as u64);
                if Some(&t.value) != rejected.as_ref() && left > Self::margin(life) * 2 {
                    let now = Instant::now();
                    let age = Duration::from_millis((now_ms - t.fetched_ms).max(0) as u64);
                    let fetched_at = now.checked_sub(age).unwrap_or(now);
                    return Ok(self.install(st, t.value, fetched_at, now + left, false));
                }
            }
            if limiter.lock_token_fetch(&self.appid, LOCK_HOLD).await? {
                let reply = match self.call(st).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = limiter.unlock_token_fetch(&self.appid).await;
                        return Err(SharedFetch::Endpoint(e));
                    }
                };
                let (Some(value), Some(expires_in)) = (reply.access_token, reply.expires_in) else {
                    let _ = limiter.unlock_token_fetch(&self.appid).await;
                    return Err(SharedFetch::Endpoint(
                        self.transient(st, "reply without access_token".into()),
                    ));
                };
                let fetched_ms = chrono::Utc::now().timestamp_millis();
                let shared = crate::account::redis::SharedToken {
                    value: value.clone(),
                    fetched_ms,
                    expires_ms: fetched_ms + (expires_in.max(1) * 1000) as i64,
                };
                limiter.store_token(&self.appid, &shared).await?;
                let now = Instant::now();
                let expires_at = now + Duration::from_secs(expires_in.max(1));
                return Ok(self.install(st, value, now, expires_at, false));
            }
            if started.elapsed() > WAIT_FOR_OTHER {
                return Err(SharedFetch::Endpoint(TokenError::Unavailable {
                    detail: "another replica is fetching the shared token".into(),
                    retry_in: Duration::from_secs(1),
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A forced `stable_token` call: the new token, or `None` when the call failed. Either
    /// way the caller still holds the good token the normal call has just returned, so a
    /// failure neither stops the account nor starts the endpoint's backoff; it is counted
    /// (`force_quota`, `force_error`). A 45009 means WeChat says the day's forced refreshes
    /// are spent: the budget is marked spent too.
    async fn call_forced(&self, st: &mut RefreshState) -> Option<crate::wechat::ApiReply> {
        let result = self
            .client
            .fetch_token(self.mode, &self.appid, &self.secret, true)
            .await;
        let detail = match result {
            Ok(r) if r.errcode == 45009 => {
                self.count("force_quota");
                self.skipped("budget_spent");
                st.forces.exhaust(self.force_budget);
                self.metrics
                    .token_force_budget_remaining
                    .with_label_values(&[&self.appid])
                    .set(0);
                return None;
            }
            Ok(r) if r.errcode == 0 && r.access_token.is_some() && r.expires_in.is_some() => {
                self.count("forced");
                return Some(r);
            }
            Ok(r) => format!("errcode {}: {}", r.errcode, r.errmsg),
            Err(e) => e.to_string(),
        };
        self.count("force_error");
        tracing::warn!(appid = %self.appid, %detail, "the forced token refresh failed; keeping the token the endpoint has just returned");
        None
    }

    /// A normal (not forced) call of the token endpoint.
    async fn call(&self, st: &mut RefreshState) -> Result<crate::wechat::ApiReply, TokenError> {
        let result = self
            .client
            .fetch_token(self.mode, &self.appid, &self.secret, false)
            .await;
        self.interpret(st, result)
    }

    /// What a token endpoint's answer means: a reply to use, a transient failure, or a stop.
    fn interpret(
        &self,
        st: &mut RefreshState,
        result: Result<crate::wechat::ApiReply, crate::wechat::SendError>,
    ) -> Result<crate::wechat::ApiReply, TokenError> {
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                self.count("error");
                return Err(self.transient(st, e.to_string()));
            }
        };
        if reply.errcode == 0 {
            if reply.access_token.is_none() || reply.expires_in.is_none() {
                // Counted as what it is, not as a refresh that worked.
                self.count("error");
                return Err(self.transient(st, "reply without access_token".into()));
            }
            self.count("ok");
            return Ok(reply);
        }
        let code = reply.errcode;
        match errcode::token_endpoint_action(code) {
            Action::StopAccount | Action::PauseQuota => {
                let quota = errcode::token_endpoint_action(code) == Action::PauseQuota;
                let hold = if quota {
                    // The token endpoint's own daily limit: wait for it to reset.
                    crate::account::limiter::until_beijing_midnight().min(self.stop_probe * 12)
                } else {
                    self.stop_probe
                };
                st.stopped = Some((code, Instant::now() + hold));
                self.stops.set_token_stopped(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The local budget (used without Redis, or while it is down): at most `per_day` forced
    /// refreshes, never two inside WeChat's 30 s, and a 45009 from WeChat spends the rest.
    #[test]
    fn the_local_force_budget_holds_the_spacing_and_the_day() {
        let mut f = LocalForces::default();
        let t0 = Instant::now();
        assert_eq!(f.take(2, t0), ForceGrant::Granted(1));
        assert_eq!(f.take(2, t0 + Duration::from_secs(29)), ForceGrant::TooSoon);
        assert_eq!(
            f.take(2, t0 + Duration::from_secs(31)),
            ForceGrant::Granted(2)
        );
        assert_eq!(f.take(2, t0 + Duration::from_secs(90)), ForceGrant::Spent);

        let mut f = LocalForces::default();
        f.exhaust(10);
        assert_eq!(f.take(10, t0), ForceGrant::Spent);
    }
}
