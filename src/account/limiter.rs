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
//! With `WXD_REDIS_URL`, the rate and the daily count are shared by all replicas
//! ([`super::redis`]); without it, they are per process.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{FixedOffset, NaiveDate, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::redis::RedisLink;
use crate::metrics::Metrics;
use crate::policy::DeferReason;

/// Beijing time (Asia/Shanghai has no daylight saving), in which WeChat's daily quota resets.
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

pub(crate) fn beijing_today() -> NaiveDate {
    Utc::now().with_timezone(&beijing()).date_naive()
}

/// Time left until the next midnight in Beijing.
pub fn until_beijing_midnight() -> Duration {
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

/// One account's limiter and gate.
pub struct AccountGate {
    appid: String,
    rate_per_sec: u32,
    /// Paces this process at the account's full rate.
    limiter: DefaultDirectRateLimiter,
    /// Paces this process while Redis is configured but unreachable: rate / expected replicas.
    fallback: DefaultDirectRateLimiter,
    shared: Option<Arc<RedisLink>>,
    daily_quota: Option<u64>,
    probe_every: Duration,
    state: Mutex<GateState>,
    metrics: Arc<Metrics>,
    /// Sends of this account waiting for its rate limiter right now.
    waiting: std::sync::atomic::AtomicU32,
    /// `wxdispatch_limiter_wait_seconds` of this account, observed by every send.
    wait_seconds: prometheus::Histogram,
    /// `wxdispatch_quota_paused` of this gate: the gate alone writes it.
    paused_gauge: prometheus::IntGauge,
    /// `wxdispatch_sent_today` of this gate: today's count against the daily quota.
    sent_gauge: prometheus::IntGauge,
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
        appid: &str,
        rate_per_sec: u32,
        daily_quota: Option<u64>,
        probe_every: Duration,
        metrics: Arc<Metrics>,
        shared: Option<Arc<RedisLink>>,
        expected_replicas: u32,
    ) -> AccountGate {
        let fallback_rate = (rate_per_sec / expected_replicas.max(1)).max(1);
        AccountGate {
            appid: appid.to_string(),
            rate_per_sec,
            limiter: RateLimiter::direct(quota_for(rate_per_sec)),
            fallback: RateLimiter::direct(quota_for(fallback_rate)),
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
            wait_seconds: metrics.limiter_wait_seconds.with_label_values(&[appid]),
            paused_gauge: {
                let g = metrics.quota_paused.with_label_values(&[appid]);
                g.set(0);
                g
            },
            sent_gauge: {
                if let Some(q) = daily_quota {
                    metrics
                        .daily_quota
                        .with_label_values(&[appid])
                        .set(i64::try_from(q).unwrap_or(i64::MAX));
                }
                metrics.sent_today.with_label_values(&[appid])
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
            && st.sent_today + st.reserved >= q
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
            Some(slot) => match slot.get().await {
                Some(limiter) => {
                    let burst = burst_for(self.rate_per_sec);
                    match limiter.reserve(&self.appid, self.rate_per_sec, burst).await {
                        Ok(wait) => {
                            self.metrics.redis_fallback.set(0);
                            tokio::time::sleep(wait).await;
                            self.limiter.until_ready().await;
                        }
                        Err(e) => {
                            tracing::warn!(appid = %self.appid, error = %e,
                                "shared rate limiter failed; falling back to the local rate");
                            slot.failed().await;
                            self.metrics.redis_fallback.set(1);
                            self.fallback.until_ready().await;
                        }
                    }
                }
                None => {
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
        let shared_count = match &self.shared {
            Some(slot) => match slot.get().await {
                Some(l) => l
                    .count_sent(&self.appid, &beijing_today().to_string())
                    .await
                    .ok(),
                None => None,
            },
            None => None,
        };
        self.record_sent(was_probe, shared_count);
    }

    fn record_sent(&self, was_probe: bool, shared_count: Option<u64>) {
        let mut st = self.state.lock().expect("gate lock");
        self.roll_day(&mut st);
        st.sent_today += 1;
        st.reserved = st.reserved.saturating_sub(1);
        if let Some(n) = shared_count {
            // The shared count includes every replica's sends.
            st.sent_today = st.sent_today.max(n);
        }
        self.sent_gauge
            .set(i64::try_from(st.sent_today).unwrap_or(i64::MAX));
        if was_probe {
            st.probe_in_flight = false;
        }
        // Only the probe resumes: sends admitted before the pause may still succeed after it.
        if was_probe && st.paused_since.take().is_some() {
            self.paused_gauge.set(0);
            tracing::info!(appid = %self.appid, "daily quota available again; account resumed");
        }
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

/// The governor quota for a rate: a burst of about 5 % of a second's sends (at least 1), so the
/// busiest wall-clock second stays well under 1.1 times the rate.
pub fn quota_for(rate_per_sec: u32) -> Quota {
    let rate = NonZeroU32::new(rate_per_sec.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(burst_for(rate_per_sec)).expect("non-zero");
    Quota::per_second(rate).allow_burst(burst)
}

/// The burst allowed on top of the steady rate: about 5 % of a second's sends, at least 1.
pub fn burst_for(rate_per_sec: u32) -> u32 {
    (rate_per_sec / 20).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(quota: Option<u64>, probe: Duration) -> AccountGate {
        AccountGate::new("wxa", 1000, quota, probe, Arc::new(Metrics::new()))
    }

    #[test]
    fn a_paused_account_lets_exactly_one_probe_through_per_interval() {
        let g = gate(None, Duration::from_secs(600));
        assert_eq!(g.admit(), Admission::Go);
        g.pause_quota();
        // Paused just now: the next probe is one interval away.
        assert!(matches!(
            g.admit(),
            Admission::Later {
                reason: DeferReason::Quota,
                ..
            }
        ));
        // Pretend the interval passed.
        g.state.lock().unwrap().last_probe = Some(Instant::now() - Duration::from_secs(601));
        assert_eq!(g.admit(), Admission::Probe);
        assert!(
            matches!(g.admit(), Admission::Later { .. }),
            "one probe at a time"
        );
        g.record_sent(true, None);
        assert_eq!(g.admit(), Admission::Go, "a successful probe resumes");
    }

    #[test]
    fn the_local_daily_quota_pauses_before_it_is_exceeded() {
        let g = gate(Some(2), Duration::from_secs(600));
        assert_eq!(g.admit(), Admission::Go);
        assert_eq!(g.admit(), Admission::Go);
        // Two sends in flight already use up the quota of 2.
        assert!(matches!(
            g.admit(),
            Admission::Later {
                reason: DeferReason::Quota,
                ..
            }
        ));
        // One fails: its place comes back.
        drop(g.reservation(false));
        assert_eq!(g.admit(), Admission::Go);
        g.record_sent(false, None);
        g.record_sent(false, Some(2));
        assert!(matches!(
            g.admit(),
            Admission::Later {
                reason: DeferReason::Quota,
                ..
            }
        ));
    }

    #[test]
    fn minute_limit_waits_for_the_next_minute() {
        let g = gate(None, Duration::from_secs(600));
        let d = crate::policy::decision::until_next_minute(Utc::now().timestamp_millis());
        assert!(d <= Duration::from_millis(60_050));
        g.slow_down(d);
        assert!(matches!(
            g.admit(),
            Admission::Later {
                reason: DeferReason::RateMinute,
                ..
            }
        ));
    }

    #[test]
    fn beijing_midnight_is_within_a_day() {
        let d = until_beijing_midnight();
        assert!(d > Duration::ZERO && d <= Duration::from_secs(86_400));
    }

    #[tokio::test]
    async fn a_long_queue_of_waiters_is_told_to_defer() {
        let g = Arc::new(AccountGate::new(
            "wxa",
            2,
            None,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        ));
        // Ten sends wait at 2/s: the tenth would wait about four seconds.
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let g = g.clone();
            waiting.push(tokio::spawn(async move {
                g.pace_within(Duration::from_secs(60)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = g.pace_within(Duration::from_secs(1)).await;
        assert!(r.is_err(), "{r:?}");
        for w in waiting {
            w.abort();
        }
    }

    #[tokio::test]
    async fn pacing_holds_the_rate() {
        let g = AccountGate::new(
            "wxa",
            100,
            None,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        );
        let start = Instant::now();
        for _ in 0..55 {
            g.pace().await;
        }
        // 5 of burst, then 50 at 100/s: about half a second.
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(450), "{e:?}");
    }
}
