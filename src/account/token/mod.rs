//! The access-token cache of one account.
//!
//! All in-flight sends share one cached token. When it is missing or about to expire, the first
//! caller refreshes it while the others wait on the same lock and then reuse the result
//! (single flight). A token that WeChat rejects is invalidated only if it is still the current
//! one (compare-and-invalidate), so a burst of failures on the same token costs one refresh.
//!
//! The cache fetches through its [`TokenSource`] (WeChat's `stable_token` or classic endpoint,
//! or a central token service, which is told the refused token and decides whether to refresh);
//! everything here is the policy around those calls, the same for every source:
//! - a circuit breaker: a configuration error (bad appid or secret, IP not whitelisted) stops
//!   the account; the source is probed again only after `stop_probe` has passed
//!   ([`reply`]: what a source's answer means);
//! - after a transient failure, the next fetch waits an exponentially growing pause;
//! - forced `stable_token` refreshes are rationed ([`force`]);
//! - classic tokens are shared by the replicas through Redis ([`shared`]).
//!
//! A token is refreshed ahead of its expiry: configured accounts by a timer each
//! ([`TokenCache::keep_fresh`]); a platform's authorizers, which may be thousands and mostly
//! idle, on use instead ([`TokenCache::get_for_send`]): a send that finds the token past its
//! refresh point starts one background refresh and goes on with the still-valid token.
//!
//! When no force is allowed the same token is handed out again and the job goes down its
//! ordinary backoff path: a storm of token errors never stops a healthy account.
//!
//! The classic endpoint issues a new token on every call (and invalidates the previous one
//! after five minutes), so there a rejection of a fresh token is not followed by another
//! fetch either: it would cost one of the 2,000 daily calls and could not help.
//!
//! A central service hears of a refused token once (`invalid=`, single flight, so a burst of
//! refusals costs one call); a token it gave in that answer and WeChat refuses again within a
//! minute is not reported again, as a forced token is not forced again.

mod ahead;
mod force;
mod reply;
mod shared;
mod source;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account::RedisLink;
use crate::config::{Secret, TokenMode};
use crate::metrics::{Metrics, SeriesLabel};
use crate::policy::errcode;
pub use crate::wechat::Ask;
use crate::wechat::WechatClient;
use force::{ForceRefresh, LocalForces};
pub use source::TokenSource;

/// How long after the source handed out (or confirmed) a token it counts as fresh.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// A cached access token.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    pub fetched_at: Instant,
    pub expires_at: Instant,
    /// The last time the source handed out this token.
    pub confirmed_at: Instant,
    /// Whether it came from a forced refresh (`stable_token`), or from a central service's
    /// answer to an `invalid=` call.
    pub forced: bool,
    /// From here on it is refreshed ahead of its expiry, while still handed out.
    pub refresh_at: Instant,
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
    /// Component mode: the appid has not authorized the platform (or no longer has).
    #[error("{appid} has not authorized the platform")]
    NotAuthorized { appid: String },
    /// The token source failed transiently; try again after `retry_in`.
    #[error("token endpoint unavailable: {detail}; retry in {retry_in:?}")]
    Unavailable { detail: String, retry_in: Duration },
}

/// A token WeChat rejected on a send.
struct Rejected {
    value: String,
    /// The source had confirmed it within [`FRESH_FOR`] of the rejection.
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

/// How a token cache guards its source's limits.
#[derive(Clone)]
pub struct TokenLimits {
    /// After a configuration error, the source is probed again only after this.
    pub stop_probe: Duration,
    /// Forced `stable_token` refreshes allowed per Beijing day.
    pub force_budget: u32,
    /// Redis, to share the force budget and spacing (and the classic token) with the other
    /// replicas.
    pub shared: Option<Arc<RedisLink>>,
    /// The account's stop state, shared with the send side; the token side reports its
    /// circuit breaker there, and it alone writes the gauge.
    pub stops: Arc<crate::account::AccountStops>,
}

/// One account's token cache.
pub struct TokenCache {
    appid: String,
    /// The `appid` label of this account's series (`_other` when folded).
    label: SeriesLabel,
    source: TokenSource,
    client: WechatClient,
    metrics: Arc<Metrics>,
    stop_probe: Duration,
    /// The forced-refresh budget and where it is shared.
    force: ForceRefresh,
    /// Redis, to share the classic token with the other replicas.
    shared: Option<Arc<RedisLink>>,
    /// Where the token side's stop is reported (the one writer of the stopped gauge).
    stops: Arc<crate::account::AccountStops>,
    current: Mutex<Option<Arc<Token>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// No refresh ahead on use is started before this instant (one at a time, and spaced
    /// while another replica holds the platform's lock).
    ahead_next: Mutex<Option<Instant>>,
}

/// The label of an account's token-state gauges (age, expiry, forced refreshes left): only an
/// account with series of its own has them, as their sum over folded accounts means nothing.
fn own_series(label: &SeriesLabel) -> Option<&str> {
    (!label.is_folded()).then(|| label.as_str())
}

impl TokenCache {
    pub fn new(
        appid: String,
        source: TokenSource,
        client: WechatClient,
        metrics: Arc<Metrics>,
        limits: TokenLimits,
    ) -> TokenCache {
        let label = SeriesLabel::own(&appid);
        Self::labelled(appid, label, source, client, metrics, limits)
    }

    /// [`TokenCache::new`] for an account whose series carry `label`.
    pub fn labelled(
        appid: String,
        label: SeriesLabel,
        source: TokenSource,
        client: WechatClient,
        metrics: Arc<Metrics>,
        limits: TokenLimits,
    ) -> TokenCache {
        let TokenLimits {
            stop_probe,
            force_budget,
            shared,
            stops,
        } = limits;
        if let Some(own) = own_series(&label) {
            metrics
                .token_force_budget_remaining
                .with_label_values(&[own])
                .set(i64::from(force_budget));
        }
        TokenCache {
            appid,
            label,
            source,
            client,
            metrics,
            stop_probe,
            force: ForceRefresh {
                budget: force_budget,
                shared: shared.clone(),
            },
            shared,
            stops,
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            ahead_next: Mutex::new(None),
        }
    }

    fn mode(&self) -> TokenMode {
        self.source.mode()
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
        if self.mode() == TokenMode::Classic && fresh {
            // A token the classic endpoint issued moments ago is as new as any it could issue
            // now: another fetch would spend a daily call and invalidate other replicas'
            // tokens, and could not help. The job backs off instead.
            tracing::info!(appid = %self.appid, "a fresh access token was rejected; not fetching another (the code is likely not about the token)");
            self.skipped("fresh_classic_token");
            return;
        }
        if self.source.reports_refusals() && self.vouched_for(used) {
            // The source answered a report with this token moments ago, a new one or the same
            // after deciding not to refresh; this refusal (or a send's that began before the
            // report) is not news. Reporting again would make it refresh on every retry of a
            // job whose code is not about the token (the forced `stable_token` rule); the job
            // backs off, and a minute on it may report again.
            tracing::info!(appid = %self.appid, "a token the source has just vouched for was rejected; not reporting it again yet");
            self.skipped("fresh_central_token");
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

    /// Whether the current token has `used`'s value and was the source's answer to a report
    /// (`invalid=`) within [`FRESH_FOR`]. The current token is what counts, not `used`: with a
    /// source that keeps the refused token, a send that began before the report holds an
    /// older copy of the same value.
    fn vouched_for(&self, used: &Token) -> bool {
        let cur = self.current.lock().expect("token lock");
        cur.as_ref().is_some_and(|t| {
            t.value == used.value && t.forced && t.confirmed_at.elapsed() < FRESH_FOR
        })
    }

    fn skipped(&self, reason: &str) {
        self.metrics
            .token_force_skipped_total
            .with_label_values(&[self.label.as_str(), reason])
            .inc();
    }

    /// Refreshes in the background shortly before the token expires, so sends rarely wait.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        loop {
            let wait = {
                let cur = self.current.lock().expect("token lock").clone();
                match cur {
                    Some(t) => t
                        .refresh_at
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1)),
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
                    Some(t) => now >= t.refresh_at,
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
        let Some(own) = own_series(&self.label) else {
            return;
        };
        if let Some(t) = self.current.lock().expect("token lock").as_ref() {
            let a = [own];
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
        if self.mode() == TokenMode::Classic
            && let Some(slot) = &self.shared
            && let Some(limiter) = slot.get().await
        {
            match self.classic_shared(&limiter, st).await {
                Ok(token) => return Ok(token),
                Err(shared::SharedFetch::Endpoint(e)) => return Err(e),
                Err(shared::SharedFetch::Redis(e)) => {
                    tracing::warn!(appid = %self.appid, error = %e, "Redis unreachable for the shared classic token; fetching one for this replica alone");
                    slot.failed().await;
                }
            }
        }
        // A central service is told which token WeChat refused; it decides whether to refresh.
        let refused = match &st.last_rejected {
            Some(r) if self.source.reports_refusals() => Some(r.value.clone()),
            _ => None,
        };
        let ask = refused.as_deref().map_or(Ask::Current, Ask::Refused);
        let mut reply = self.call(st, ask).await?;
        // A central token given in answer to a refusal counts as forced: see `invalidate`.
        let mut forced = refused.is_some();
        if let Some(r) = &refused
            && reply.access_token.as_deref() == Some(r)
        {
            tracing::warn!(appid = %self.appid, "the central token service kept the token WeChat refused; using it, jobs back off");
        }
        // Whether stable_token handed back the token WeChat just rejected, and how it was had.
        let handed_back = st
            .last_rejected
            .as_ref()
            .filter(|r| {
                self.mode() == TokenMode::Stable && reply.access_token.as_deref() == Some(&r.value)
            })
            .map(|r| (r.fresh, r.forced));
        if let Some((fresh, was_forced)) = handed_back
            && let Some(r) = self.after_hand_back(st, fresh, was_forced).await
        {
            reply = r;
            forced = true;
        }
        let (Some(value), Some(expires_in)) = (reply.access_token, reply.expires_in) else {
            // interpret() lets no such reply through; stay graceful all the same.
            return Err(self.transient(st, "reply without access_token".into()));
        };
        let now = Instant::now();
        // A source shared by the replicas says when its token expires and is refreshed, the
        // same for all of them.
        let (expires_at, refresh_at) = match reply.shared_life {
            Some(life) => {
                let expires_at = now + Duration::from_millis(life.expires_in_ms.max(1));
                let refresh_at = (now + Duration::from_millis(life.refresh_in_ms)).min(expires_at);
                (expires_at, Some(refresh_at))
            }
            None => (now + Duration::from_secs(expires_in.max(1)), None),
        };
        Ok(self.install(st, value, (now, expires_at, refresh_at), forced))
    }

    /// Makes a token obtained from the source (or from the other replicas) the current one,
    /// and clears the failure and stop state. `times`: when it was fetched, when it expires,
    /// and when the source wants it refreshed (by default a little before `get` would stop
    /// handing it out).
    fn install(
        &self,
        st: &mut RefreshState,
        value: String,
        times: (Instant, Instant, Option<Instant>),
        forced: bool,
    ) -> Arc<Token> {
        let (fetched_at, expires_at, refresh_at) = times;
        let refresh_at =
            refresh_at.unwrap_or_else(|| expires_at - Self::margin(expires_at - fetched_at) * 2);
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
            refresh_at,
        });
        *self.current.lock().expect("token lock") = Some(token.clone());
        self.update_gauges();
        token
    }
}
