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
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::config::{Config, ConfigError};
use crate::job::{Job, MsgType};
use crate::limiter::{AccountGate, AccountStops, Admission, Reservation};
use crate::metrics::{AccountMetrics, Metrics};
use crate::outcome::{JobIdentity, Outcome, SendStatus};
pub use crate::policy::{DeferReason, EndReason, Next, RetryPolicy, RetryState};
use crate::wechat::catalogue::{self, Mismatch, Source};
use crate::wechat::errcode::{self, Action};
use crate::wechat::token::Token;
use crate::wechat::{ApiReply, SendError, TokenError, TokenLimits, TokenSource, WechatClient};

/// How a job ends its turn on a worker.
#[derive(Debug)]
pub enum Disposition {
    /// Publish this outcome, then ack.
    Final(Outcome),
    /// Park the job in a delay queue for `delay`, then ack; it comes back with `state`.
    Defer {
        delay: Duration,
        reason: DeferReason,
        state: RetryState,
    },
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
    /// Whether the account is stopped by a configuration error (send or token side).
    pub stops: Arc<AccountStops>,
    /// The account's per-job metric handles.
    pub metrics: AccountMetrics,
}

impl AccountCtx {
    /// The gate that holds the daily count and the quota pause of message type `t`.
    pub fn quota_gate(&self, t: MsgType) -> &AccountGate {
        match t {
            MsgType::MiniprogramSubscribe => &self.mp_gate,
            MsgType::Template | MsgType::Subscribe => &self.gate,
        }
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
    /// Builds every account's gate, token source and stop state. Fails when an account has no
    /// AppSecret, i.e. the configuration was loaded without its credentials.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Dispatcher, ConfigError> {
        // One connection per send in flight, and a few for the token and catalogue calls.
        let client = WechatClient::with_connections(
            &config.wechat.api_base,
            config.wechat.http_timeout,
            config.limits.concurrency + 8,
        );
        let shared = config
            .limits
            .redis_url
            .as_deref()
            .map(|url| Arc::new(crate::limiter::shared::SharedSlot::new(url)));
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
                        shared.clone(),
                        config.limits.expected_replicas,
                    )
                };
                let stops = Arc::new(AccountStops::new(&a.appid, &metrics));
                let account_metrics = metrics.init_account(&a.appid);
                let ctx = AccountCtx {
                    mp_gate: gate(&mp_id),
                    gate: gate(&a.appid),
                    tokens: Arc::new(TokenSource::new(
                        a.appid.clone(),
                        secret.clone(),
                        config.wechat.token_mode,
                        client.clone(),
                        metrics.clone(),
                        TokenLimits {
                            stop_probe: config.limits.account_stop_probe,
                            force_budget: config.wechat.token_force_budget,
                            shared: shared.clone(),
                            stops: stops.clone(),
                        },
                    )),
                    stops,
                    metrics: account_metrics,
                    catalogues: Default::default(),
                    fetching: tokio::sync::Mutex::new(()),
                };
                Ok((a.appid.clone(), Arc::new(ctx)))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Dispatcher {
            client,
            accounts,
            metrics,
            policy: config.retry.clone(),
            stop_probe: config.limits.account_stop_probe,
        })
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Arc<AccountCtx>> {
        self.accounts.values()
    }

    /// A configured account's per-job metric handles.
    pub fn account_metrics(&self, appid: &str) -> Option<&AccountMetrics> {
        self.accounts.get(appid).map(|a| &a.metrics)
    }

    /// Runs a job until it has a final outcome or must be deferred.
    pub async fn run(&self, job: &Job, mut state: RetryState) -> Disposition {
        let Some(acct) = self.accounts.get(&job.appid) else {
            // The parser only lets configured accounts through; this is a bug, not bad input.
            let mut o = self.outcome(job, SendStatus::Rejected, &state);
            o.reason = Some(EndReason::UnknownAccount.as_str().into());
            return Disposition::Final(o);
        };
        loop {
            if let Some(deadline) = job.not_after
                && Utc::now() > deadline
            {
                let mut o = self.outcome(job, SendStatus::Expired, &state);
                o.reason = Some(EndReason::NotAfterPassed.as_str().into());
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
                        return self.defer(appid, wait, DeferReason::Backoff, state);
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
        o.reason = Some(EndReason::UnknownDelivery.as_str().into());
        o.errmsg = last.map(|l| format!("last error: {l}"));
        o
    }

    /// One try, in the policy's order: the account admits the job (stopped, quota, pace), a
    /// token, the catalogue check, the request, then what its answer means. Each step may end
    /// the try; an attempt is counted only once a send's result is known.
    async fn try_once(&self, job: &Job, acct: &AccountCtx, state: &mut RetryState) -> Try {
        let reservation = match self.admit(job, acct, state).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let fetching = Instant::now();
        let token = match acct.tokens.get().await {
            Ok(t) => t,
            Err(e) => return self.no_token(job, state, e, fetching.elapsed()),
        };
        if let Err(m) = self
            .check_catalogue(&job.appid, acct, &token.value, job.msg_type, &job.body)
            .await
        {
            return Try::Done(self.rejected_by_catalogue(job, state, m));
        }
        let started = Instant::now();
        let result = self
            .client
            .send(job.msg_type, &token.value, job.body.clone())
            .await;
        let took = started.elapsed();
        acct.metrics.send_duration.observe(took.as_secs_f64());
        match result {
            Ok(reply) => {
                self.on_reply(job, acct, state, reservation, &token, reply, took)
                    .await
            }
            Err(e) => self.on_send_error(job, state, e, took),
        }
    }

    /// The account's side of a try: not stopped, within its daily quota (or this is the
    /// quota's probe), and paced. A short wait for the account happens here, in place; a long
    /// one defers the job. Neither is an attempt. The place taken in the day's count (on the
    /// quota gate of the job's type) is released unless the send succeeds.
    async fn admit<'a>(
        &self,
        job: &Job,
        acct: &'a AccountCtx,
        state: &RetryState,
    ) -> Result<Reservation<'a>, Try> {
        let appid = job.appid.as_str();
        if let Some(hold) = acct.stops.send_hold(self.stop_probe) {
            return Err(Try::Done(self.defer(
                appid,
                hold,
                DeferReason::AccountStopped,
                *state,
            )));
        }
        let quota = acct.quota_gate(job.msg_type);
        let probe = match quota.admit() {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Later { delay, reason } if delay <= self.policy.inline_max => {
                // Short enough to wait in place. Still a deferral (counted as one), never a
                // retry: the budget is for errors, and this is the account's state.
                self.metrics
                    .deferred_total
                    .with_label_values(&[appid, reason.as_str()])
                    .inc();
                tokio::time::sleep(delay).await;
                return Err(Try::Waited);
            }
            Admission::Later { delay, reason } => {
                return Err(Try::Done(self.defer(appid, delay, reason, *state)));
            }
        };
        let reservation = quota.reservation(probe);
        if let Err(wait) = acct.gate.pace_within(self.policy.inline_max).await {
            // Too many of this account's sends already wait for its rate: park this one
            // rather than hold a slot other accounts could use.
            drop(reservation);
            return Err(Try::Done(self.defer(
                appid,
                wait,
                DeferReason::Rate,
                *state,
            )));
        }
        Ok(reservation)
    }

    /// No token: a stopped account defers the job; an unavailable token endpoint is a failed
    /// attempt like a failed send.
    fn no_token(&self, job: &Job, state: &mut RetryState, e: TokenError, took: Duration) -> Try {
        match e {
            TokenError::Stopped { retry_in, .. } => {
                Try::Done(self.defer(&job.appid, retry_in, DeferReason::AccountStopped, *state))
            }
            TokenError::Unavailable { retry_in, .. } => {
                state.attempts += 1;
                Try::Again {
                    reason: EndReason::TokenUnavailable.as_str().into(),
                    wait: retry_in.max(self.policy.delay(state.attempts - 1)),
                    took,
                }
            }
        }
    }

    /// The catalogue says the job cannot succeed: reject it without a request.
    fn rejected_by_catalogue(&self, job: &Job, state: &RetryState, m: Mismatch) -> Disposition {
        tracing::info!(job_id = %job.id, appid = %job.appid, reason = m.reason(), detail = %m.detail(), "rejected before sending: the template catalogue says the job cannot succeed");
        let mut o = self.outcome(job, SendStatus::Rejected, state);
        o.reason = Some(m.reason().into());
        o.errmsg = Some(m.detail());
        Disposition::Final(o)
    }

    /// A send with no WeChat answer (transport error, timeout, an HTTP status, an unreadable
    /// body). It may have been delivered, so it is retried only where WeChat deduplicates.
    fn on_send_error(
        &self,
        job: &Job,
        state: &mut RetryState,
        e: SendError,
        took: Duration,
    ) -> Try {
        let appid = job.appid.as_str();
        state.attempts += 1;
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
                EndReason::MaybeSent.as_str().into(),
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
            // The HTTP rows of the policy table (ERROR_POLICY.md): a redirect or a 4xx other
            // than 408/425/429 will not change on retry; those three are a front end or proxy
            // asking us to slow down, so wait at least as long as it asks.
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
        Try::Again {
            reason: e.label(),
            wait,
            took,
        }
    }

    /// WeChat answered: the policy table's action for its errcode, with its side effects on
    /// the account (resume, pause, slow down, stop) and the token.
    #[allow(clippy::too_many_arguments)]
    async fn on_reply(
        &self,
        job: &Job,
        acct: &AccountCtx,
        state: &mut RetryState,
        reservation: Reservation<'_>,
        token: &Token,
        reply: ApiReply,
        took: Duration,
    ) -> Try {
        let appid = job.appid.as_str();
        let code = reply.errcode;
        let action = errcode::action(code);
        if code == 0 {
            acct.metrics.api_ok.inc();
        } else {
            self.count_api(appid, &code.to_string());
        }
        // An attempt is counted once its result is known, and only when the result is about
        // the job: the minute limit, the quota and a stopped account are the account's state.
        if !matches!(
            action,
            Action::SlowDown | Action::PauseQuota | Action::StopAccount
        ) {
            state.attempts += 1;
        }
        let quota = reservation.gate();
        let again = |state: &RetryState| Try::Again {
            reason: errcode::reason(code).into_owned(),
            wait: self.policy.delay(state.attempts - 1),
            took,
        };
        match action {
            Action::Success => {
                if acct.stops.resume_sends() {
                    tracing::info!(
                        appid,
                        "a send for a stopped account succeeded; account resumed"
                    );
                }
                reservation.sent().await;
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
                acct.tokens.invalidate(token).await;
                again(state)
            }
            Action::Retry => again(state),
            Action::SlowDown => {
                let wait = quota.slow_down();
                tracing::warn!(job_id = %job.id, appid, errcode = code, "minute limit hit; slowing down until the next minute");
                Try::Done(self.defer(appid, wait, DeferReason::RateMinute, *state))
            }
            Action::PauseQuota => {
                quota.pause_quota();
                let delay = self.policy.inline_max + Duration::from_secs(1);
                let delay = delay.max(Duration::from_secs(1));
                Try::Done(self.defer(appid, delay, DeferReason::Quota, *state))
            }
            Action::StopAccount => {
                if acct.stops.stop_sends(code, self.stop_probe) {
                    tracing::error!(job_id = %job.id, appid, errcode = code,
                        reason = %errcode::reason(code), errmsg = %reply.errmsg,
                        "WeChat refused the account's configuration (IP whitelist or API \
                         permission); account STOPPED: its jobs are deferred, one probe send per \
                         {}s. Fix the account in the WeChat admin console.",
                        self.stop_probe.as_secs());
                }
                Try::Done(self.defer(appid, self.stop_probe, DeferReason::AccountStopped, *state))
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
        reason: DeferReason,
        state: RetryState,
    ) -> Disposition {
        self.metrics
            .deferred_total
            .with_label_values(&[appid, reason.as_str()])
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
        let about = JobIdentity {
            id: Some(job.id.to_string()),
            appid: Some(job.appid.clone()),
            touser: Some(job.touser.clone()),
            msg_type: Some(job.msg_type),
        };
        let mut o = Outcome::for_job(status, about);
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
