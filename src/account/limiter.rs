//! Per-account pacing and pausing.
//!
//! Each account has a governor rate limiter (its configured sends per second with a small
//! burst) shared by every in-flight send of the process, and a gate that says whether the
//! account may send at all right now:
//! - **quota paused** after WeChat's 45009 or when the local daily counter reaches the
//!   configured `daily_quota`: jobs are deferred through the delay queue, and one probe send is
//!   let through per probe interval; a successful probe resumes the account;
//! - **slowed** after 45011 (minute limit) until the next minute.
//!
//! Nothing here ever calls `clear_quota`: that is an operator's decision.
//!
//! With `WXD_REDIS_URL`, the rate and the daily count are shared by all replicas: the gate
//! leases slots of the account's schedule in Redis and adds its count there in batches
//! ([`super::shared`]); without it, they are per process.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{FixedOffset, NaiveDate, Utc};
use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::link::RedisLink;
use super::shared::{Paced, Shared};
use crate::metrics::{AccountGauge, Metrics, SeriesLabel};
use crate::policy::DeferReason;

/// Beijing time (Asia/Shanghai has no daylight saving), in which WeChat's daily quota resets.
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

pub(crate) fn beijing_today() -> NaiveDate {
    Utc::now().with_timezone(&beijing()).date_naive()
}

/// Time left until the next midnight in Beijing.
pub(super) fn until_beijing_midnight() -> Duration {
    let now = Utc::now().with_timezone(&beijing());
    let next = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists");
    (next - now.naive_local())
        .to_std()
        .unwrap_or(Duration::from_secs(1))
}

/// What the gate says about sending one job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Go,
    /// The account is paused, but this job may send as the probe.
    Probe,
    /// Not now: come back after `delay`. `reason` is a metric label.
    Later {
        delay: Duration,
        reason: DeferReason,
    },
}

#[derive(Debug)]
struct GateState {
    /// Set while paused on the daily quota.
    paused_since: Option<Instant>,
    last_probe: Option<Instant>,
    probe_in_flight: bool,
    slow_until: Option<Instant>,
    day: NaiveDate,
    sent_today: u64,
    /// Admitted sends not yet finished: they count against the daily quota, so that many
    /// concurrent sends cannot overshoot it.
    reserved: u64,
}

/// What names a gate: its id (the appid, or `<appid>:miniprogram_subscribe`), which keys its
/// shared state, and the `appid` label of its series (the id, or `_other` when folded).
#[derive(Debug, Clone)]
pub struct GateId {
    pub id: String,
    pub label: SeriesLabel,
}

impl From<&str> for GateId {
    /// A gate with series of its own.
    fn from(id: &str) -> GateId {
        GateId {
            id: id.to_string(),
            label: SeriesLabel::own(id),
        }
    }
}

impl From<&String> for GateId {
    fn from(id: &String) -> GateId {
        GateId::from(id.as_str())
    }
}

/// One account's limiter and gate.
pub struct AccountGate {
    appid: String,
    rate_per_sec: u32,
    /// Paces this process at the account's full rate (without Redis).
    limiter: DefaultDirectRateLimiter,
    /// Paces this process while Redis is configured but unreachable: rate / expected replicas.
    fallback: DefaultDirectRateLimiter,
    /// The shared schedule and count, with `WXD_REDIS_URL`.
    shared: Option<Arc<Shared>>,
    daily_quota: Option<u64>,
    probe_every: Duration,
    state: Mutex<GateState>,
    metrics: Arc<Metrics>,
    /// Sends of this account waiting for its rate limiter right now.
    waiting: std::sync::atomic::AtomicU32,
    /// `wxdispatch_limiter_wait_seconds` of this account, observed by every send.
    wait_seconds: prometheus::Histogram,
    /// `wxdispatch_quota_paused` of this gate: the gate alone writes it.
    paused_gauge: AccountGauge,
    /// `wxdispatch_sent_today` of this gate: today's count against the daily quota.
    sent_gauge: AccountGauge,
}

impl AccountGate {
    pub fn new(
        appid: &str,
        rate_per_sec: u32,
        daily_quota: Option<u64>,
        probe_every: Duration,
        metrics: Arc<Metrics>,
    ) -> AccountGate {
        Self::with_shared(
            appid,
            rate_per_sec,
            daily_quota,
            probe_every,
            metrics,
            None,
            1,
        )
    }

    /// A gate whose rate and daily count are shared through Redis when `shared` is set.
    pub fn with_shared(
        id: impl Into<GateId>,
        rate_per_sec: u32,
        daily_quota: Option<u64>,
        probe_every: Duration,
        metrics: Arc<Metrics>,
        shared: Option<Arc<RedisLink>>,
        expected_replicas: u32,
    ) -> AccountGate {
        let GateId { id: appid, label } = id.into();
        let appid = appid.as_str();
        let fallback_rate = (rate_per_sec / expected_replicas.max(1)).max(1);
        let shared = shared.map(|link| {
            let burst = burst_for(rate_per_sec);
            Arc::new(Shared::new(
                link,
                appid,
                rate_per_sec,
                burst,
                expected_replicas,
            ))
        });
        AccountGate {
            appid: appid.to_string(),
            rate_per_sec,
            limiter: RateLimiter::direct_with_clock(quota_for(rate_per_sec), clock()),
            fallback: RateLimiter::direct_with_clock(quota_for(fallback_rate), clock()),
            shared,
            daily_quota,
            probe_every,
            state: Mutex::new(GateState {
                paused_since: None,
                last_probe: None,
                probe_in_flight: false,
                slow_until: None,
                day: beijing_today(),
                sent_today: 0,
                reserved: 0,
            }),
            wait_seconds: metrics
                .limiter_wait_seconds
                .with_label_values(&[label.as_str()]),
            paused_gauge: {
                let g = AccountGauge::new(&metrics.quota_paused, &label);
                g.set(0);
                g
            },
            sent_gauge: {
                if let Some(q) = daily_quota {
                    AccountGauge::new(&metrics.daily_quota, &label)
                        .set(i64::try_from(q).unwrap_or(i64::MAX));
                }
                AccountGauge::new(&metrics.sent_today, &label)
            },
            metrics,
            waiting: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Whether a job may be sent now.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut st = self.state.lock().expect("gate lock");
        self.roll_day(&mut st);
        if let Some(until) = st.slow_until {
            if now < until {
                return Admission::Later {
                    delay: until - now,
                    reason: DeferReason::RateMinute,
                };
            }
            st.slow_until = None;
        }
        if let Some(q) = self.daily_quota
            && self.today(&st) + st.reserved >= q
        {
            // Our own counter says today's quota is used up: wait for the Beijing midnight.
            return Admission::Later {
                delay: until_beijing_midnight().min(self.probe_every),
                reason: DeferReason::Quota,
            };
        }
        if st.paused_since.is_some() {
            let due = st
                .last_probe
                .is_none_or(|t| now.duration_since(t) >= self.probe_every);
            if due && !st.probe_in_flight {
                st.probe_in_flight = true;
                st.last_probe = Some(now);
                st.reserved += 1;
                return Admission::Probe;
            }
            let next = st
                .last_probe
                .map(|t| (t + self.probe_every).saturating_duration_since(now))
                .unwrap_or(self.probe_every);
            return Admission::Later {
                delay: next.max(Duration::from_secs(1)),
                reason: DeferReason::Quota,
            };
        }
        st.reserved += 1;
        Admission::Go
    }

    /// Wraps an admission (`Go` or `Probe`) so that it is released on every path that does
    /// not end in a successful send.
    pub fn reservation(&self, probe: bool) -> Reservation<'_> {
        Reservation {
            gate: self,
            probe,
            committed: false,
        }
    }

    fn release(&self, probe: bool) {
        let mut st = self.state.lock().expect("gate lock");
        st.reserved = st.reserved.saturating_sub(1);
        if probe {
            st.probe_in_flight = false;
        }
    }

    /// Waits for the rate limiter, unless the queue of sends already waiting for this account
    /// means a wait longer than `max_wait`: then returns `Err` with the estimated wait, so the
    /// job can be deferred instead of holding a worker slot (a slow account must not starve
    /// the others sharing the jobs queue).
    pub async fn pace_within(&self, max_wait: Duration) -> Result<Duration, Duration> {
        use std::sync::atomic::Ordering;
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let burst = burst_for(self.rate_per_sec);
        let estimate = Duration::from_secs_f64(
            f64::from(ahead.saturating_sub(burst)) / f64::from(self.rate_per_sec),
        );
        if estimate > max_wait {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(estimate);
        }
        let waited = self.pace().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Ok(waited)
    }

    /// Waits for the rate limiter; returns how long it waited.
    pub async fn pace(&self) -> Duration {
        let start = Instant::now();
        match &self.shared {
            None => self.limiter.until_ready().await,
            Some(shared) => match shared.pace().await {
                Paced::Leased => self.metrics.redis_fallback.set(0),
                // Made no call: the gauge says what the last call (a batch's) found.
                Paced::Unleased => self
                    .metrics
                    .redis_fallback
                    .set(i64::from(!shared.reachable())),
                Paced::Unreachable => {
                    self.metrics.redis_fallback.set(1);
                    self.fallback.until_ready().await;
                }
            },
        }
        let waited = start.elapsed();
        self.wait_seconds.observe(waited.as_secs_f64());
        waited
    }

    /// Records a successful send; a successful probe resumes a paused account.
    pub async fn on_sent(&self, was_probe: bool) {
        if self.record_sent(was_probe)
            && let Some(shared) = &self.shared
        {
            // Boxed: a Redis call now and then, kept out of every job's future.
            Box::pin(shared.flush()).await;
        }
    }

    /// Gives back what the gate leased of the shared schedule and adds its uncounted sends to
    /// the shared count: when the worker stops.
    pub async fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.close().await;
        }
    }

    /// Today's count: this process's sends, or with Redis every replica's as last seen plus
    /// this process's not yet added there.
    fn today(&self, st: &GateState) -> u64 {
        match &self.shared {
            Some(shared) => st.sent_today.max(shared.sent_today()),
            None => st.sent_today,
        }
    }

    /// Counts a successful send; says whether the shared count must be added to now.
    fn record_sent(&self, was_probe: bool) -> bool {
        let mut st = self.state.lock().expect("gate lock");
        self.roll_day(&mut st);
        st.sent_today += 1;
        st.reserved = st.reserved.saturating_sub(1);
        let flush = self
            .shared
            .as_ref()
            .is_some_and(|shared| shared.count_one(self.daily_quota, st.reserved, st.sent_today));
        self.sent_gauge
            .set(i64::try_from(self.today(&st)).unwrap_or(i64::MAX));
        if was_probe {
            st.probe_in_flight = false;
        }
        // Only the probe resumes: sends admitted before the pause may still succeed after it.
        if was_probe && st.paused_since.take().is_some() {
            self.paused_gauge.set(0);
            tracing::info!(appid = %self.appid, "daily quota available again; account resumed");
        }
        flush
    }

    /// WeChat said 45009: today's quota is spent. Pause the account.
    pub fn pause_quota(&self) {
        let mut st = self.state.lock().expect("gate lock");
        st.probe_in_flight = false;
        if st.paused_since.is_none() {
            st.paused_since = Some(Instant::now());
            st.last_probe = Some(Instant::now());
            self.paused_gauge.set(1);
            tracing::warn!(
                appid = %self.appid,
                errcode = 45009,
                probe_every_secs = self.probe_every.as_secs(),
                "daily template quota reached; account PAUSED, jobs are deferred (not failed) \
                 and one probe is sent per interval. An operator may call clear_quota."
            );
        }
    }

    /// WeChat said 45011: hold this gate's sends for `d` (until the next minute).
    pub fn slow_down(&self, d: Duration) {
        let mut st = self.state.lock().expect("gate lock");
        st.slow_until = Some(Instant::now() + d);
    }

    fn roll_day(&self, st: &mut GateState) {
        let today = beijing_today();
        if st.day != today {
            st.day = today;
            st.sent_today = 0;
            self.sent_gauge.set(0);
        }
    }
}

/// An admitted send. Dropped without [`Reservation::commit`], it gives its place back.
pub struct Reservation<'a> {
    gate: &'a AccountGate,
    probe: bool,
    committed: bool,
}

impl<'a> Reservation<'a> {
    /// The send succeeded: the place is now counted as sent (by [`AccountGate::on_sent`]).
    pub fn commit(mut self) {
        self.committed = true;
    }

    /// The send succeeded: commit the place and count the send, which resumes a paused
    /// account when this was its probe.
    pub async fn sent(self) {
        let (gate, probe) = (self.gate, self.probe);
        self.commit();
        gate.on_sent(probe).await;
    }

    /// The gate the place was taken on (the quota gate of the job's message type).
    pub fn gate(&self) -> &'a AccountGate {
        self.gate
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.gate.release(self.probe);
        }
    }
}

/// The clock every gate's limiters read. Making a clock probes the CPU (`CPUID`, which a
/// virtual machine traps) for tens of µs: once per process, not twice per account, which for
/// thousands of a platform's authorizers was a tenth of the worker's CPU.
fn clock() -> DefaultClock {
    static CLOCK: std::sync::LazyLock<DefaultClock> =
        std::sync::LazyLock::new(DefaultClock::default);
    CLOCK.clone()
}

/// The governor quota for a rate: a burst of about 5 % of a second's sends (at least 1), so the
/// busiest wall-clock second stays well under 1.1 times the rate.
pub(super) fn quota_for(rate_per_sec: u32) -> Quota {
    let rate = NonZeroU32::new(rate_per_sec.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(burst_for(rate_per_sec)).expect("non-zero");
    Quota::per_second(rate).allow_burst(burst)
}

/// The burst allowed on top of the steady rate: about 5 % of a second's sends, at least 1.
pub(super) fn burst_for(rate_per_sec: u32) -> u32 {
    (rate_per_sec / 20).max(1)
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
