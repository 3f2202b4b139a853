//! The send policy for one job: pace, get a token, send, and decide what a reply means.
//!
//! The decision for every WeChat error code comes from [`crate::wechat::errcode`]. A job ends
//! in a [`Disposition`]: a final outcome, or a deferral through a delay queue (for waits too
//! long to hold a consumer slot: backoff beyond a few seconds, a quota pause, a stopped
//! account). The retry state travels with a deferred job in AMQP headers, so the retry budget
//! and the deduplication window survive a restart.
//!
//! The one rule that must never break: a message that *may* have reached WeChat (timeout, 5xx,
//! unreadable reply) is only retried with the same `client_msg_id` and only inside WeChat's
//! 10-minute deduplication window. Past it, the outcome is `failed` with reason
//! `unknown_delivery`, never a blind resend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use rand::Rng;

use crate::config::Config;
use crate::job::{Job, MsgType};
use crate::limiter::{AccountGate, Admission};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, SendStatus};
use crate::wechat::catalogue::{self, Mismatch, Source};
use crate::wechat::errcode::{self, Action};
use crate::wechat::{SendError, TokenError, TokenLimits, TokenSource, WechatClient};

/// WeChat deduplicates `(openid, client_msg_id)` for 10 minutes; keep a safety margin.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(9 * 60 + 30);

/// Retry bookkeeping that travels with a job through the delay queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Tries made so far that ended in a reply or an error (sends and token fetches). Waiting
    /// on the account (quota, a stopped account, the rate) is not a try.
    pub attempts: u32,
    /// When the job was first seen by a worker (Unix ms).
    pub first_seen_ms: i64,
    /// When the first attempt that may have reached WeChat was made (Unix ms).
    pub maybe_sent_ms: Option<i64>,
    /// Time charged to transient errors so far (ms): each failed try's own duration plus the
    /// backoff chosen after it. This, not the job's age, is what the retry budget limits, so
    /// a day-long quota pause or a stopped account never turns into a `failed` job.
    pub transient_ms: u64,
}

impl RetryState {
    pub fn fresh() -> RetryState {
        RetryState {
            attempts: 0,
            first_seen_ms: Utc::now().timestamp_millis(),
            maybe_sent_ms: None,
            transient_ms: 0,
        }
    }

    /// Charges `d` to the transient-error budget.
    fn charge(&mut self, d: Duration) {
        self.transient_ms = self
            .transient_ms
            .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64);
    }

    /// Whether a try made `wait` after `now_ms` could fall outside WeChat's deduplication
    /// window of an earlier attempt that may have been delivered. Such a try could produce a
    /// second message, so it must not be made.
    pub fn past_dedup_window(&self, now_ms: i64, wait: Duration) -> bool {
        self.maybe_sent_ms.is_some_and(|first| {
            let since = Duration::from_millis((now_ms - first).max(0) as u64);
            since + wait >= DEDUP_WINDOW
        })
    }
}

/// What happens after a try that failed in a way worth repeating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again after the wait.
    Retry,
    /// Stop: the job ends `failed` with this reason.
    GiveUp(String),
    /// Stop without another try: an earlier attempt may have been delivered, so the job ends
    /// `failed` with reason `unknown_delivery`.
    UnknownDelivery,
}

/// How a job ends its turn on a worker.
#[derive(Debug)]
pub enum Disposition {
    /// Publish this outcome, then ack.
    Final(Outcome),
    /// Park the job in a delay queue for `delay`, then ack; it comes back with `state`.
    Defer {
        delay: Duration,
        reason: &'static str,
        state: RetryState,
    },
}

/// The retry settings, from the configuration.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
    pub budget: Duration,
    pub inline_max: Duration,
}

impl RetryPolicy {
    pub fn from_config(c: &Config) -> RetryPolicy {
        RetryPolicy {
            max_attempts: c.max_attempts,
            base: Duration::from_millis(c.retry_base_ms),
            max_delay: Duration::from_secs(c.retry_max_delay_secs),
            budget: Duration::from_secs(c.retry_budget_secs),
            inline_max: Duration::from_millis(c.inline_retry_max_ms),
        }
    }

    /// Whether a job that just failed with `reason` may be tried again after `wait`.
    ///
    /// It may not when its attempts or its transient-error budget are spent, or when the retry
    /// would land outside the deduplication window of an attempt that may have been
    /// delivered. Giving up after such an attempt is always [`Next::UnknownDelivery`], whatever
    /// the last error was: the message may have reached the user, and the upstream must not
    /// resend it blindly.
    ///
    /// The budget counts only [`RetryState::transient_ms`], never the job's age: time spent
    /// paused on quota, behind a stopped account, on the rate limit or in the queue is not an
    /// error and must not fail the job (issue 19). Only `not_after` ends a waiting job.
    pub fn next(&self, state: &RetryState, now_ms: i64, reason: &str, wait: Duration) -> Next {
        let charged = Duration::from_millis(state.transient_ms);
        let spent = state.attempts >= self.max_attempts || charged + wait > self.budget;
        if state.past_dedup_window(now_ms, wait) || (spent && state.maybe_sent_ms.is_some()) {
            Next::UnknownDelivery
        } else if spent {
            Next::GiveUp(reason.into())
        } else {
            Next::Retry
        }
    }

    /// The delay before retry number `n` (0-based): exponential backoff from backon (base,
    /// doubling, capped at `max_delay`) with jitter: a uniform pick between a tenth of that cap
    /// and the cap. Full jitter spreads a burst of failures; the floor keeps a retry from
    /// firing back-to-back with the failure it answers.
    pub fn delay(&self, n: u32) -> Duration {
        let cap = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(n as usize)
            .unwrap_or(self.max_delay);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 10..=ms.max(1)))
    }
}

/// Everything one account needs to send.
pub struct AccountCtx {
    pub gate: AccountGate,
    /// The mini-program subscribe messages' own daily count and quota pause: WeChat counts
    /// them apart from the account's other sends, so a spent mini-program quota must not hold
    /// back template messages (nor the other way round). Pacing stays with `gate`: the rate is
    /// the account's, whatever the type. Its metric label is `<appid>:miniprogram_subscribe`.
    pub mp_gate: AccountGate,
    pub tokens: Arc<TokenSource>,
    /// The account's template catalogues ([`catalogue::Source`] order: private, subscription),
    /// read by every send; `fetching` makes one task fetch while the others send unchecked.
    catalogues: [std::sync::RwLock<catalogue::State>; 2],
    fetching: tokio::sync::Mutex<()>,
    /// Set while a send was refused for the account's configuration (40164 IP whitelist,
    /// 48001 API unauthorized, ...): the errcode and when one probe send may go out.
    send_stop: Mutex<Option<(i64, Instant)>>,
}

impl AccountCtx {
    /// The gate that holds the daily count and the quota pause of message type `t`.
    pub fn quota_gate(&self, t: MsgType) -> &AccountGate {
        match t {
            MsgType::MiniprogramSubscribe => &self.mp_gate,
            MsgType::Template | MsgType::Subscribe => &self.gate,
        }
    }

    /// How long this job must wait because the account is stopped, or `None` to send. Once
    /// the hold has passed, exactly one caller gets `None` (the probe) and the hold is renewed
    /// for everybody else; a successful probe clears it.
    fn stop_hold(&self, probe_every: Duration) -> Option<Duration> {
        let mut stop = self.send_stop.lock().expect("stop lock");
        let (code, until) = (*stop)?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        *stop = Some((code, now + probe_every));
        None
    }

    /// Stops sends for `hold`. Returns whether the account was running until now.
    fn stop_sends(&self, code: i64, hold: Duration) -> bool {
        let mut stop = self.send_stop.lock().expect("stop lock");
        let was_running = stop.is_none();
        *stop = Some((code, Instant::now() + hold));
        was_running
    }

    /// A send succeeded: clears a stop. Returns whether there was one.
    fn resume_sends(&self) -> bool {
        self.send_stop.lock().expect("stop lock").take().is_some()
    }
}

/// Sends jobs according to the policy. Shared by all in-flight tasks.
pub struct Dispatcher {
    client: WechatClient,
    accounts: HashMap<String, Arc<AccountCtx>>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    /// While an account is stopped by a send's configuration error, one probe per this.
    stop_probe: Duration,
}

/// What one try produced.
enum Try {
    Done(Disposition),
    /// The try failed transiently after taking `took`; another may follow after `wait`.
    /// Both are charged to the retry budget.
    Again {
        reason: String,
        wait: Duration,
        took: Duration,
    },
    /// The account was not ready (quota probe, minute limit) and the job already waited for
    /// it in place. Not an error: nothing is charged, and the job simply tries again.
    Waited,
}

impl Dispatcher {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Dispatcher {
        let client = WechatClient::new(
            &config.api_base,
            Duration::from_millis(config.http_timeout_ms),
        );
        let shared = config
            .redis_url
            .as_deref()
            .map(|url| Arc::new(crate::limiter::shared::SharedSlot::new(url)));
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                metrics.init_account(&a.appid);
                let mp_id = format!("{}:{}", a.appid, MsgType::MiniprogramSubscribe);
                metrics.quota_paused.with_label_values(&[&mp_id]).set(0);
                let gate = |id: &str| {
                    AccountGate::with_shared(
                        id,
                        a.rate_per_sec,
                        a.daily_quota,
                        Duration::from_secs(config.quota_probe_secs.max(1)),
                        metrics.clone(),
                        shared.clone(),
                        config.expected_replicas,
                    )
                };
                let ctx = AccountCtx {
                    mp_gate: gate(&mp_id),
                    gate: gate(&a.appid),
                    tokens: Arc::new(TokenSource::new(
                        a.appid.clone(),
                        a.secret.clone(),
                        config.token_mode,
                        client.clone(),
                        metrics.clone(),
                        TokenLimits {
                            stop_probe: Duration::from_secs(config.account_stop_probe_secs.max(1)),
                            force_budget: config.token_force_budget,
                            shared: shared.clone(),
                        },
                    )),
                    send_stop: Mutex::new(None),
                    catalogues: Default::default(),
                    fetching: tokio::sync::Mutex::new(()),
                };
                (a.appid.clone(), Arc::new(ctx))
            })
            .collect();
        Dispatcher {
            client,
            accounts,
            metrics,
            policy: RetryPolicy::from_config(config),
            stop_probe: Duration::from_secs(config.account_stop_probe_secs.max(1)),
        }
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Arc<AccountCtx>> {
        self.accounts.values()
    }

    /// Runs a job until it has a final outcome or must be deferred.
    pub async fn run(&self, job: &Job, mut state: RetryState) -> Disposition {
        let Some(acct) = self.accounts.get(&job.appid) else {
            // The parser only lets configured accounts through; this is a bug, not bad input.
            let mut o = self.outcome(job, SendStatus::Rejected, &state);
            o.reason = Some("unknown_account".into());
            return Disposition::Final(o);
        };
        loop {
            if let Some(deadline) = job.not_after
                && Utc::now() > deadline
            {
                let mut o = self.outcome(job, SendStatus::Expired, &state);
                o.reason = Some("not_after_passed".into());
                return Disposition::Final(o);
            }
            // A job back from a delay queue (or redelivered) may have waited past the window.
            if state.past_dedup_window(Utc::now().timestamp_millis(), Duration::ZERO) {
                return Disposition::Final(self.unknown_delivery(job, &state, None));
            }
            match self.try_once(job, acct, &mut state).await {
                Try::Done(d) => return d,
                Try::Waited => {}
                Try::Again { reason, wait, took } => {
                    state.charge(took);
                    let appid = job.appid.as_str();
                    let now = Utc::now().timestamp_millis();
                    match self.policy.next(&state, now, &reason, wait) {
                        Next::Retry => {}
                        Next::UnknownDelivery => {
                            return Disposition::Final(self.unknown_delivery(
                                job,
                                &state,
                                Some(&reason),
                            ));
                        }
                        Next::GiveUp(r) => {
                            let mut o = self.outcome(job, SendStatus::Failed, &state);
                            o.reason = Some(r);
                            return Disposition::Final(o);
                        }
                    }
                    state.charge(wait);
                    self.metrics
                        .retries_total
                        .with_label_values(&[appid, &reason])
                        .inc();
                    tracing::debug!(job_id = %job.id, appid, %reason, wait_ms = wait.as_millis() as u64, "retrying");
                    if wait > self.policy.inline_max {
                        return self.defer(appid, wait, "backoff", state);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The `failed` outcome of a job that may or may not have been delivered.
    fn unknown_delivery(&self, job: &Job, state: &RetryState, last: Option<&str>) -> Outcome {
        tracing::warn!(
            job_id = %job.id, appid = %job.appid, last_error = last.unwrap_or("-"),
            "giving up on a message that may already have been delivered (an earlier attempt \
             timed out or got no readable reply); reporting unknown_delivery instead of risking \
             a second message. Check with the recipient before resending it."
        );
        let mut o = self.outcome(job, SendStatus::Failed, state);
        o.reason = Some("unknown_delivery".into());
        o.errmsg = last.map(|l| format!("last error: {l}"));
        o
    }

    async fn try_once(&self, job: &Job, acct: &AccountCtx, state: &mut RetryState) -> Try {
        let appid = job.appid.as_str();
        if let Some(hold) = acct.stop_hold(self.stop_probe) {
            return Try::Done(self.defer(appid, hold, "account_stopped", *state));
        }
        let quota = acct.quota_gate(job.msg_type);
        let probe = match quota.admit() {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Later { delay, reason } => {
                if delay <= self.policy.inline_max {
                    // Short enough to wait in place. Still a deferral (counted as one), never
                    // a retry: the budget is for errors, and this is the account's state.
                    self.metrics
                        .deferred_total
                        .with_label_values(&[appid, reason])
                        .inc();
                    tokio::time::sleep(delay).await;
                    return Try::Waited;
                }
                return Try::Done(self.defer(appid, delay, reason, *state));
            }
        };
        let reservation = quota.reservation(probe);
        if let Err(wait) = acct.gate.pace_within(self.policy.inline_max).await {
            // Too many of this account's sends already wait for its rate: park this one
            // rather than hold a slot other accounts could use.
            drop(reservation);
            return Try::Done(self.defer(appid, wait, "rate", *state));
        }
        let fetching = Instant::now();
        let token = match acct.tokens.get().await {
            Ok(t) => t,
            Err(TokenError::Stopped { retry_in, .. }) => {
                return Try::Done(self.defer(appid, retry_in, "account_stopped", *state));
            }
            Err(TokenError::Unavailable { retry_in, .. }) => {
                state.attempts += 1;
                return Try::Again {
                    reason: "token_unavailable".into(),
                    wait: retry_in.max(self.policy.delay(state.attempts - 1)),
                    took: fetching.elapsed(),
                };
            }
        };
        if let Err(m) = self
            .check_catalogue(&job.appid, acct, &token.value, job.msg_type, &job.body)
            .await
        {
            tracing::info!(job_id = %job.id, appid, reason = m.reason(), detail = %m.detail(), "rejected before sending: the template catalogue says the job cannot succeed");
            let mut o = self.outcome(job, SendStatus::Rejected, state);
            o.reason = Some(m.reason().into());
            o.errmsg = Some(m.detail());
            return Try::Done(Disposition::Final(o));
        }
        state.attempts += 1;
        let started = Instant::now();
        let result = self
            .client
            .send(job.msg_type, &token.value, job.body.clone())
            .await;
        self.metrics
            .send_duration_seconds
            .with_label_values(&[appid])
            .observe(started.elapsed().as_secs_f64());
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                self.count_api(appid, &e.label());
                if e.maybe_sent() && !job.msg_type.deduplicated() {
                    // No client_msg_id on this endpoint: WeChat would take a retry as a second
                    // message. The upstream must find out whether the user got it.
                    tracing::warn!(job_id = %job.id, appid, msg_type = %job.msg_type, error = %e,
                        "a subscription send may have been delivered and cannot be retried \
                         safely (the endpoint takes no client_msg_id); reporting maybe_sent");
                    return Try::Done(Disposition::Final(self.final_error(
                        job,
                        state,
                        SendStatus::Failed,
                        None,
                        "maybe_sent".into(),
                    )));
                }
                if e.maybe_sent() && state.maybe_sent_ms.is_none() {
                    state.maybe_sent_ms = Some(Utc::now().timestamp_millis());
                }
                let mut wait = self.policy.delay(state.attempts - 1);
                if let SendError::Status {
                    status,
                    retry_after,
                } = e
                {
                    // The HTTP rows of the policy table (ERROR_POLICY.md): a redirect or a 4xx
                    // other than 408/425/429 will not change on retry; those three are a
                    // front end or proxy asking us to slow down, so wait at least as long as
                    // it asks.
                    if errcode::http_rule(status).action == Action::Reject {
                        return Try::Done(Disposition::Final(self.final_error(
                            job,
                            state,
                            SendStatus::Rejected,
                            None,
                            e.label(),
                        )));
                    }
                    wait = wait.max(retry_after.unwrap_or_default());
                }
                tracing::info!(job_id = %job.id, appid, error = %e, attempt = state.attempts, "send failed");
                return Try::Again {
                    reason: e.label(),
                    wait,
                    took: started.elapsed(),
                };
            }
        };
        let code = reply.errcode;
        self.count_api(appid, &code.to_string());
        let action = errcode::action(code);
        match action {
            Action::Success => {
                if acct.resume_sends() {
                    self.metrics
                        .account_stopped
                        .with_label_values(&[appid])
                        .set(0);
                    tracing::info!(
                        appid,
                        "a send for a stopped account succeeded; account resumed"
                    );
                }
                reservation.commit();
                quota.on_sent(probe).await;
                let mut o = self.outcome(job, SendStatus::Sent, state);
                o.errcode = Some(0);
                o.errmsg = Some(reply.errmsg);
                o.msgid = reply.msgid;
                Try::Done(Disposition::Final(o))
            }
            Action::Reject => {
                if code == 40037 {
                    // The template may have been deleted or added since the catalogue was
                    // fetched: fetch it again before the next send.
                    *acct.catalogues[source_index(job.msg_type)]
                        .write()
                        .expect("catalogue lock") = catalogue::State::Empty;
                }
                tracing::info!(job_id = %job.id, appid, errcode = code, errmsg = %reply.errmsg, "rejected by WeChat");
                Try::Done(Disposition::Final(self.final_error(
                    job,
                    state,
                    SendStatus::Rejected,
                    Some((code, reply.errmsg)),
                    errcode::reason(code).into_owned(),
                )))
            }
            Action::RefreshToken => {
                // Refresh, then retry after the ordinary backoff: if the code is not really
                // about the token (41006), an immediate retry would only repeat it.
                acct.tokens.invalidate(&token).await;
                Try::Again {
                    reason: errcode::reason(code).into_owned(),
                    wait: self.policy.delay(state.attempts - 1),
                    took: started.elapsed(),
                }
            }
            Action::Retry => Try::Again {
                reason: errcode::reason(code).into_owned(),
                wait: self.policy.delay(state.attempts - 1),
                took: started.elapsed(),
            },
            Action::SlowDown => {
                let wait = quota.slow_down();
                tracing::warn!(job_id = %job.id, appid, errcode = code, "minute limit hit; slowing down until the next minute");
                // Not the job's fault: give the attempt back.
                state.attempts -= 1;
                Try::Done(self.defer(appid, wait, "rate_minute", *state))
            }
            Action::PauseQuota => {
                quota.pause_quota();
                state.attempts -= 1;
                let delay = self.policy.inline_max + Duration::from_secs(1);
                let delay = delay.max(Duration::from_secs(1));
                Try::Done(self.defer(appid, delay, "quota", *state))
            }
            Action::StopAccount => {
                if acct.stop_sends(code, self.stop_probe) {
                    tracing::error!(job_id = %job.id, appid, errcode = code,
                        reason = %errcode::reason(code), errmsg = %reply.errmsg,
                        "WeChat refused the account's configuration (IP whitelist or API \
                         permission); account STOPPED: its jobs are deferred, one probe send per \
                         {}s. Fix the account in the WeChat admin console.",
                        self.stop_probe.as_secs());
                }
                state.attempts -= 1;
                self.metrics
                    .account_stopped
                    .with_label_values(&[appid])
                    .set(1);
                Try::Done(self.defer(appid, self.stop_probe, "account_stopped", *state))
            }
        }
    }

    /// Checks a job body (a single job's, or a batch's head) against the account's catalogue
    /// of its type, fetching the catalogue when it is due. Sends go on unchecked (and are
    /// counted) while the catalogue cannot be fetched.
    async fn check_catalogue(
        &self,
        appid: &str,
        acct: &AccountCtx,
        token: &crate::config::Secret,
        t: MsgType,
        body: &[u8],
    ) -> Result<(), Mismatch> {
        let slot = &acct.catalogues[source_index(t)];
        let ready = |slot: &std::sync::RwLock<catalogue::State>| {
            let st = slot.read().expect("catalogue lock");
            match &*st {
                catalogue::State::Ready { fetched, .. } => Some(fetched.clone()),
                _ => None,
            }
        };
        let (due, never) = {
            let st = slot.read().expect("catalogue lock");
            (
                st.due(Instant::now()),
                matches!(*st, catalogue::State::Empty),
            )
        };
        // Before the first fetch every job waits for it (else the first burst of jobs would
        // all go unchecked); a refresh is made by one task while the others use the old one.
        let lock = if !due {
            None
        } else if never {
            Some(acct.fetching.lock().await)
        } else {
            acct.fetching.try_lock().ok()
        };
        if let Some(_one) = lock {
            // Checked again under the lock: another task may just have fetched it.
            if slot.read().expect("catalogue lock").due(Instant::now()) {
                let new = match self.client.fetch_catalogue(token, Source::of(t)).await {
                    Ok(reply) => {
                        let (code, msg) = (reply.errcode, reply.errmsg.clone());
                        match reply.templates() {
                            Some(list) => {
                                tracing::info!(appid, source = ?Source::of(t), templates = list.len(), "template catalogue fetched");
                                catalogue::State::Ready {
                                    fetched: Arc::new(catalogue::Fetched::new(&list)),
                                    at: Instant::now(),
                                }
                            }
                            None => {
                                tracing::warn!(appid, source = ?Source::of(t), errcode = code, errmsg = %msg, "template catalogue unavailable; sending unchecked");
                                catalogue::State::Failed(Instant::now())
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(appid, source = ?Source::of(t), error = %e, "template catalogue unavailable; sending unchecked");
                        catalogue::State::Failed(Instant::now())
                    }
                };
                *slot.write().expect("catalogue lock") = new;
            }
        }
        match ready(slot) {
            Some(fetched) => fetched.check(body),
            None => {
                self.metrics
                    .catalogue_unchecked_total
                    .with_label_values(&[appid])
                    .inc();
                Ok(())
            }
        }
    }

    /// Checks a batch against the catalogue before it is expanded, so a batch whose template
    /// cannot work fails once, as a whole, instead of once per recipient. `Ok` when it may go
    /// on (also when no token or catalogue is available: the recipients' sends will tell).
    pub async fn check_batch(&self, batch: &crate::job::Batch) -> Result<(), Mismatch> {
        let Some(acct) = self.accounts.get(&batch.appid) else {
            return Ok(());
        };
        let Ok(token) = acct.tokens.get().await else {
            return Ok(());
        };
        self.check_catalogue(
            &batch.appid,
            acct,
            &token.value,
            batch.msg_type,
            batch.head(),
        )
        .await
    }

    /// The catalogue of one type for `wxdispatch templates`: fetched now, never cached.
    pub async fn templates(
        &self,
        appid: &str,
        t: MsgType,
    ) -> anyhow::Result<Vec<catalogue::Template>> {
        let acct = self
            .accounts
            .get(appid)
            .ok_or_else(|| anyhow::anyhow!("appid {appid} is not configured"))?;
        let token = acct
            .tokens
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("no access token for {appid}: {e}"))?;
        let reply = self
            .client
            .fetch_catalogue(&token.value, Source::of(t))
            .await?;
        let (code, msg) = (reply.errcode, reply.errmsg.clone());
        reply
            .templates()
            .ok_or_else(|| anyhow::anyhow!("WeChat answered {code} {msg}"))
    }

    fn defer(
        &self,
        appid: &str,
        delay: Duration,
        reason: &'static str,
        state: RetryState,
    ) -> Disposition {
        self.metrics
            .deferred_total
            .with_label_values(&[appid, reason])
            .inc();
        Disposition::Defer {
            delay,
            reason,
            state,
        }
    }

    fn count_api(&self, appid: &str, code: &str) {
        self.metrics
            .api_requests_total
            .with_label_values(&[appid, code])
            .inc();
    }

    fn outcome(&self, job: &Job, status: SendStatus, state: &RetryState) -> Outcome {
        let mut o = Outcome::send(
            status,
            Some(job.id.to_string()),
            Some(job.appid.clone()),
            Some(job.touser.clone()),
        );
        o.msg_type = Some(job.msg_type);
        o.attempts = state.attempts;
        o
    }

    fn final_error(
        &self,
        job: &Job,
        state: &RetryState,
        status: SendStatus,
        code: Option<(i64, String)>,
        reason: String,
    ) -> Outcome {
        let mut o = self.outcome(job, status, state);
        if let Some((c, m)) = code {
            o.errcode = Some(c);
            o.errmsg = Some(m);
        }
        o.reason = Some(reason);
        o
    }
}

/// The index of a message type's catalogue in [`AccountCtx::catalogues`].
fn source_index(t: MsgType) -> usize {
    match Source::of(t) {
        Source::Private => 0,
        Source::Subscription => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each delay lies between a tenth of its exponential cap and the cap: the cap bounds a
    /// storm of retries, the floor keeps a retry from firing back-to-back with the failure it
    /// answers (a zero delay would be a hot loop), and the spread shows there is jitter.
    #[test]
    fn backoff_lies_between_a_tenth_of_the_exponential_cap_and_the_cap() {
        let p = RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            budget: Duration::from_secs(60),
            inline_max: Duration::from_secs(3),
        };
        for (n, cap) in [(0, 100), (1, 200), (2, 400), (3, 800), (20, 2000)] {
            let cap = Duration::from_millis(cap);
            let samples: Vec<Duration> = (0..200).map(|_| p.delay(n)).collect();
            let (lo, hi) = (
                *samples.iter().min().unwrap(),
                *samples.iter().max().unwrap(),
            );
            assert!(hi <= cap, "delay({n}) = {hi:?} above its cap {cap:?}");
            assert!(
                lo >= cap / 10,
                "delay({n}) = {lo:?} below a tenth of {cap:?}"
            );
            // 200 uniform picks over [cap/10, cap]: the spread is far above half the range.
            assert!(
                hi - lo > (cap - cap / 10) / 2,
                "delay({n}) has no jitter: {lo:?}..{hi:?}"
            );
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            budget: Duration::from_secs(3600),
            inline_max: Duration::from_secs(3),
        }
    }

    const MIN: i64 = 60_000;

    fn state(
        attempts: u32,
        first_seen_ago_ms: i64,
        maybe_sent_ago_ms: Option<i64>,
    ) -> (RetryState, i64) {
        let now = Utc::now().timestamp_millis();
        let st = RetryState {
            attempts,
            first_seen_ms: now - first_seen_ago_ms,
            maybe_sent_ms: maybe_sent_ago_ms.map(|ago| now - ago),
            transient_ms: 0,
        };
        (st, now)
    }

    /// A message that timed out 9.5 minutes ago is never tried again, not even at once:
    /// WeChat would no longer deduplicate it, so a retry could be a second message.
    #[test]
    fn a_maybe_sent_message_is_not_retried_outside_the_dedup_window() {
        let p = policy();
        let (st, now) = state(1, 10 * MIN, Some(9 * MIN + 30_000));
        assert!(st.past_dedup_window(now, Duration::ZERO));
        assert_eq!(
            p.next(&st, now, "timeout", Duration::ZERO),
            Next::UnknownDelivery
        );
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::from_millis(10)),
            Next::UnknownDelivery
        );
    }

    /// Inside the window the same job may retry, but only with a wait that still lands inside.
    #[test]
    fn a_maybe_sent_message_retries_only_while_the_retry_lands_inside_the_window() {
        let p = policy();
        let (st, now) = state(2, 9 * MIN, Some(9 * MIN));
        assert_eq!(
            p.next(&st, now, "timeout", Duration::from_secs(10)),
            Next::Retry
        );
        assert_eq!(
            p.next(&st, now, "timeout", Duration::from_secs(40)),
            Next::UnknownDelivery
        );
    }

    /// The window only matters for messages that may have been sent: an error reply proves
    /// WeChat did not take the message, so the same age is no reason to stop.
    #[test]
    fn a_job_with_only_error_replies_ignores_the_dedup_window() {
        let p = policy();
        let (st, now) = state(2, 20 * MIN, None);
        assert!(!st.past_dedup_window(now, Duration::from_secs(60)));
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::from_secs(60)),
            Next::Retry
        );
    }

    /// Running out of attempts or time ends `failed` with the last reason, or with
    /// `unknown_delivery` when an earlier attempt may have been delivered.
    #[test]
    fn a_spent_budget_gives_up_with_the_right_reason() {
        let p = policy();
        let (st, now) = state(6, MIN, None);
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::ZERO),
            Next::GiveUp("system_busy".into())
        );
        let (st, now) = state(6, MIN, Some(MIN));
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::ZERO),
            Next::UnknownDelivery
        );
        // The time budget: a retry that would land after it is not worth waiting for.
        let (mut st, now) = state(1, 59 * MIN, None);
        st.transient_ms = 59 * MIN as u64;
        assert_eq!(
            p.next(&st, now, "http_502", Duration::from_secs(30)),
            Next::Retry
        );
        assert_eq!(
            p.next(&st, now, "http_502", Duration::from_secs(61)),
            Next::GiveUp("http_502".into())
        );
    }

    /// Issue 19: the budget is charged with error time only. A job that waited a whole day on
    /// quota (or a stopped account) and then meets its first transient error still has its
    /// full budget; one that spent the budget on errors has not, however young it is.
    #[test]
    fn waiting_on_the_account_is_not_charged_to_the_retry_budget() {
        let p = RetryPolicy {
            budget: Duration::from_secs(3),
            ..policy()
        };
        let (st, now) = state(1, 24 * 60 * MIN, None);
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::from_secs(1)),
            Next::Retry,
            "a day of waiting is not an error"
        );
        let (mut st, now) = state(1, 1_000, None);
        st.transient_ms = 2_500;
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::from_secs(1)),
            Next::GiveUp("system_busy".into()),
            "2.5 s of errors plus a 1 s backoff exceed a 3 s budget"
        );
    }

    /// `charge` adds up, and saturates instead of wrapping.
    #[test]
    fn charging_the_budget_adds_and_saturates() {
        let mut st = RetryState::fresh();
        st.charge(Duration::from_millis(1_500));
        st.charge(Duration::from_millis(250));
        assert_eq!(st.transient_ms, 1_750);
        st.charge(Duration::MAX);
        assert_eq!(st.transient_ms, u64::MAX);
    }
}
