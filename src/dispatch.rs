//! The send policy for one job: pace, get a token, send, and decide what a reply means.
//!
//! The decision for every WeChat error code comes from [`crate::wechat::errcode`]. A job ends
//! in a [`Disposition`]: a final outcome, or a deferral through a delay queue (for waits too
//! long to hold the delivery for: backoff beyond a few seconds, a quota pause, a stopped
//! account). The retry state travels with a deferred job in AMQP headers, so the retry budget
//! and the deduplication window survive a restart.
//!
//! The one rule that must never break: a message that *may* have reached WeChat (timeout, 5xx,
//! unreadable reply) is only retried with the same `client_msg_id` and only inside WeChat's
//! 10-minute deduplication window. Past it, the outcome is `failed` with reason
//! `unknown_delivery`, never a blind resend.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::account::token::{Token, TokenError};
use crate::account::{Account, Accounts, Admission, Reservation};
use crate::config::{Config, ConfigError};
use crate::job::{Job, MsgType};
use crate::metrics::Metrics;
use crate::outcome::{JobIdentity, Outcome, SendStatus};
use crate::policy::{
    self, AccountChange, Due, End, EndStatus, Hold, JobFacts, Rules, Step, Tried, errcode,
};
pub(crate) use crate::policy::{DeferReason, EndReason, RetryState};
use crate::wechat::catalogue::{self, Mismatch, Source};
use crate::wechat::{ApiReply, WechatClient};

/// How a job ends its turn on a worker.
#[derive(Debug)]
pub(crate) enum Disposition {
    /// Publish this outcome, then ack.
    Final(Outcome),
    /// Park the job in a delay queue for `delay`, then ack; it comes back with `state`.
    Defer {
        delay: Duration,
        reason: DeferReason,
        state: RetryState,
    },
    /// It came back early from a delay queue: park it again, unchanged, for `left`.
    Early { left: Duration },
}

/// Sends jobs according to the policy. Shared by all in-flight tasks.
pub struct Dispatcher {
    client: WechatClient,
    accounts: Accounts,
    metrics: Arc<Metrics>,
    rules: Rules,
}

impl Dispatcher {
    /// Builds every account. Fails when an account has no AppSecret, i.e. the configuration
    /// was loaded without its credentials.
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Dispatcher, ConfigError> {
        // One connection per send in flight, and a few for the token and catalogue calls.
        let client = WechatClient::with_connections(
            &config.wechat.api_base,
            config.wechat.http_timeout,
            config.limits.concurrency + 8,
        );
        Ok(Dispatcher {
            accounts: Accounts::build(config, &client, &metrics)?,
            client,
            metrics,
            rules: Rules {
                retry: config.retry.clone(),
                stop_probe: config.limits.account_stop_probe,
            },
        })
    }

    /// Settles the accounts' shared limits (see [`Accounts::close`]) once the sends are over,
    /// for at most two seconds (Redis may be gone).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.accounts.close()).await;
    }

    /// Every account in use (configured, and authorizers built so far).
    pub(crate) fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.all()
    }

    /// An account in use by appid, for its per-job metric handles.
    pub(crate) fn account(&self, appid: &str) -> Option<Arc<Account>> {
        self.accounts.find(appid)
    }

    /// Carries a job's steps out until it has a final outcome or must be deferred: each step
    /// is the decision core's ([`crate::policy::decide`]), this only does what it says.
    pub(crate) async fn send_job(
        &self,
        job: &Job,
        mut state: RetryState,
        not_before_ms: Option<i64>,
    ) -> Disposition {
        let facts = JobFacts {
            deduplicated: job.msg_type.deduplicated(),
            not_before_ms,
            not_after_ms: job.not_after.map(|t| t.timestamp_millis()),
        };
        let Some(acct) = self.accounts.for_job(job.account, &job.appid).await else {
            let end = not_authorized(job);
            return Disposition::Final(self.ended(job, &state, end, None));
        };
        let acct = &*acct;
        loop {
            match policy::due(&facts, &state, now_ms()) {
                Due::Now => {}
                Due::NotYet(left) => return Disposition::Early { left },
                Due::End(end) => return Disposition::Final(self.ended(job, &state, end, None)),
            }
            let (step, reply) = self.try_once(job, acct, &facts, &mut state).await;
            let appid = job.appid.as_str();
            // The account's `appid` label: its appid, or `_other` for a folded authorizer.
            let label = acct.metrics.label.as_str();
            match step {
                Step::End(end) => return Disposition::Final(self.ended(job, &state, end, reply)),
                Step::Defer { delay, reason } => return self.defer(label, delay, reason, state),
                Step::Wait { delay, reason } => {
                    // Still a deferral (counted as one), never a retry: the budget is for
                    // errors, and this is the account's state.
                    self.count_deferred(label, reason);
                    tokio::time::sleep(delay).await;
                }
                Step::Retry {
                    reason,
                    wait,
                    in_place,
                } => {
                    self.metrics
                        .retries_total
                        .with_label_values(&[label, &reason])
                        .inc();
                    tracing::debug!(job_id = %job.id, appid, %reason, wait_ms = wait.as_millis() as u64, "retrying");
                    if !in_place {
                        return self.defer(label, wait, DeferReason::Backoff, state);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One try, in the policy's order: the account admits the job (stopped, quota, pace), a
    /// token, the catalogue check, the request; then the core decides what its result means.
    /// Returns the step and WeChat's reply, if there was one (the outcome quotes it).
    async fn try_once(
        &self,
        job: &Job,
        acct: &Account,
        facts: &JobFacts,
        state: &mut RetryState,
    ) -> (Step, Option<ApiReply>) {
        if let Some(end) = self.permission(job, acct).await {
            return (Step::End(end), None);
        }
        let reservation = match self.admit(job, acct).await {
            Ok(r) => r,
            Err(hold) => return (policy::on_hold(&self.rules, hold), None),
        };
        let fetching = Instant::now();
        let token = match acct.tokens.get_for_send().await {
            Ok(t) => t,
            Err(e) => {
                let tried = match e {
                    TokenError::NotAuthorized { .. } => {
                        if let Some(grants) = &acct.grants {
                            grants.forget();
                        }
                        self.accounts.forget(&job.appid);
                        return (Step::End(not_authorized(job)), None);
                    }
                    TokenError::Stopped { retry_in, .. } => Tried::TokenStopped { retry_in },
                    TokenError::Unavailable { retry_in, .. } => {
                        Tried::TokenUnavailable { retry_in }
                    }
                };
                let took = fetching.elapsed();
                let d = policy::decide(&self.rules, facts, state, tried, took, now_ms());
                return (d.step, None);
            }
        };
        if let Err(m) = acct
            .catalogues
            .check(
                &self.client,
                &acct.metrics,
                &job.appid,
                &token.value,
                job.msg_type,
                job.template(),
            )
            .await
        {
            tracing::info!(job_id = %job.id, appid = %job.appid, reason = m.reason(), detail = %m.detail(), "rejected before sending: the template catalogue says the job cannot succeed");
            return (Step::End(End::refused(m.reason(), m.detail())), None);
        }
        let started = Instant::now();
        let result = self
            .client
            .send(job.msg_type, &token.value, job.body.clone())
            .await;
        let took = started.elapsed();
        acct.metrics.send_duration.observe(took.as_secs_f64());
        let appid = job.appid.as_str();
        match result {
            Ok(reply) => {
                let code = reply.errcode;
                if code == 0 {
                    acct.metrics.api_ok.inc();
                } else {
                    self.count_api(acct, &code.to_string());
                }
                if code == API_UNAUTHORIZED
                    && let Some(end) = self.revoked(job, acct).await
                {
                    // The send reached WeChat and was answered: an attempt.
                    state.attempts += 1;
                    return (Step::End(end), Some(reply));
                }
                let tried = Tried::Replied { errcode: code };
                let d = policy::decide(&self.rules, facts, state, tried, took, now_ms());
                if let Some(change) = d.change {
                    self.apply(job, acct, change, reservation, &token).await;
                }
                if let Step::End(End {
                    status: EndStatus::Rejected,
                    ..
                }) = d.step
                {
                    tracing::info!(job_id = %job.id, appid, errcode = code, errmsg = %reply.errmsg, "rejected by WeChat");
                }
                (d.step, Some(reply))
            }
            Err(e) => {
                self.count_api(acct, &e.label());
                let tried = Tried::SendFailed(&e);
                let d = policy::decide(&self.rules, facts, state, tried, took, now_ms());
                match &d.step {
                    Step::End(end)
                        if end.reason.as_deref() == Some(EndReason::MaybeSent.as_str()) =>
                    {
                        tracing::warn!(job_id = %job.id, appid, msg_type = %job.msg_type, error = %e,
                            "a subscription send may have been delivered and cannot be retried \
                             safely (the endpoint takes no client_msg_id); reporting maybe_sent");
                    }
                    _ => {
                        tracing::info!(job_id = %job.id, appid, error = %e, attempt = state.attempts, "send failed");
                    }
                }
                (d.step, None)
            }
        }
    }

    /// Component mode, after WeChat answered 48001 (API not authorized): the authorizer's
    /// permission sets are read again, and if they no longer include the one the job's type
    /// needs (the merchant revoked it, and another replica got the push) the job ends
    /// `permission_not_granted` and the account goes on sending its other types. Otherwise
    /// (`None`) the refusal stops the account, as for any account.
    async fn revoked(&self, job: &Job, acct: &Account) -> Option<End> {
        acct.grants.as_ref()?.forget();
        self.permission(job, acct).await
    }

    /// Component mode: the end of a job whose type needs a permission set the authorizer did
    /// not grant, decided before the account's pace, its token or WeChat are asked anything.
    async fn permission(&self, job: &Job, acct: &Account) -> Option<End> {
        let needed = acct.grants.as_ref()?.check(job.msg_type).await.err()?;
        let sets = needed
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" or ");
        tracing::info!(job_id = %job.id, appid = %job.appid, msg_type = %job.msg_type, needed = %sets,
            "rejected before sending: the authorizer has not granted the permission set the type needs");
        let note = format!(
            "{} has not granted the platform permission set {sets}, which type {} needs",
            job.appid, job.msg_type
        );
        Some(End::refused(EndReason::PermissionNotGranted.as_str(), note))
    }

    /// The account's side of a try: not stopped, within its daily quota (or this is the
    /// quota's probe), and paced. The place taken in the day's count (on the quota gate of the
    /// job's type) is released unless the send succeeds.
    async fn admit<'a>(&self, job: &Job, acct: &'a Account) -> Result<Reservation<'a>, Hold> {
        if let Some(hold) = acct.stops.send_hold(self.rules.stop_probe) {
            return Err(Hold::SendsStopped(hold));
        }
        let quota = acct.quota_gate(job.msg_type);
        let probe = match quota.admit() {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Later { delay, reason } => return Err(Hold::Quota { delay, reason }),
        };
        let reservation = quota.reservation(probe);
        if let Err(wait) = acct.gate.pace_within(self.rules.retry.inline_max).await {
            // Too many of this account's sends already wait for its rate: park this one
            // rather than hold a consumer other accounts could use.
            drop(reservation);
            return Err(Hold::Rate(wait));
        }
        Ok(reservation)
    }

    /// Applies a decision's change to the account.
    async fn apply(
        &self,
        job: &Job,
        acct: &Account,
        change: AccountChange,
        reservation: Reservation<'_>,
        token: &Token,
    ) {
        let appid = job.appid.as_str();
        let quota = reservation.gate();
        match change {
            AccountChange::Sent => {
                if acct.stops.resume_sends() {
                    tracing::info!(
                        appid,
                        "a send for a stopped account succeeded; account resumed"
                    );
                }
                reservation.sent().await;
            }
            AccountChange::InvalidateToken => acct.tokens.invalidate(token).await,
            AccountChange::ForgetCatalogue => acct.catalogues.forget(job.msg_type),
            AccountChange::SlowDown(wait) => {
                quota.slow_down(wait);
                tracing::warn!(job_id = %job.id, appid, "minute limit hit; slowing down until the next minute");
            }
            AccountChange::PauseQuota => quota.pause_quota(),
            AccountChange::StopSends { errcode: code } => {
                if acct.stops.stop_sends(code, self.rules.stop_probe) {
                    tracing::error!(job_id = %job.id, appid, errcode = code,
                        reason = %errcode::reason(code),
                        "WeChat refused the account's configuration (IP whitelist or API \
                         permission); account STOPPED: its jobs are deferred, one probe send per \
                         {}s. Fix the account in the WeChat admin console.",
                        self.rules.stop_probe.as_secs());
                }
            }
        }
    }

    /// Checks a batch against the catalogue before it is expanded, so a batch whose template
    /// cannot work fails once, as a whole, instead of once per recipient. `Ok` when it may go
    /// on (also when no token or catalogue is available: the recipients' sends will tell).
    pub(crate) async fn check_batch(&self, batch: &crate::job::Batch) -> Result<(), Mismatch> {
        let Some(acct) = self.accounts.for_job(batch.account, &batch.appid).await else {
            // Each recipient ends `not_authorized` the same way.
            return Ok(());
        };
        if let Some(grants) = &acct.grants
            && grants.check(batch.msg_type).await.is_err()
        {
            // Each recipient ends `permission_not_granted` from the cached grants; no token.
            return Ok(());
        }
        let Ok(token) = acct.tokens.get().await else {
            return Ok(());
        };
        acct.catalogues
            .check(
                &self.client,
                &acct.metrics,
                &batch.appid,
                &token.value,
                batch.msg_type,
                batch.template(),
            )
            .await
    }

    /// The catalogue of one type for `wxdispatch templates`: fetched now, never cached.
    pub(crate) async fn templates(
        &self,
        appid: &str,
        t: MsgType,
    ) -> anyhow::Result<Vec<catalogue::Template>> {
        let acct = self.accounts.named(appid).ok_or_else(|| {
            anyhow::anyhow!("appid {appid} is not configured (nor, in component mode, an appid)")
        })?;
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
        label: &str,
        delay: Duration,
        reason: DeferReason,
        state: RetryState,
    ) -> Disposition {
        self.count_deferred(label, reason);
        Disposition::Defer {
            delay,
            reason,
            state,
        }
    }

    /// `label`: the account's `appid` label ([`crate::metrics::SeriesLabel`]).
    fn count_deferred(&self, label: &str, reason: DeferReason) {
        self.metrics
            .deferred_total
            .with_label_values(&[label, reason.as_str()])
            .inc();
    }

    fn count_api(&self, acct: &Account, code: &str) {
        self.metrics
            .api_requests_total
            .with_label_values(&[acct.metrics.label.as_str(), code])
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

    /// The outcome of a job that ended, quoting WeChat's reply when it decided the end.
    fn ended(&self, job: &Job, state: &RetryState, end: End, reply: Option<ApiReply>) -> Outcome {
        if end.is_unknown_delivery() {
            tracing::warn!(
                job_id = %job.id, appid = %job.appid, last_error = end.note.as_deref().unwrap_or("-"),
                "giving up on a message that may already have been delivered (an earlier attempt \
                 timed out or got no readable reply); reporting unknown_delivery instead of risking \
                 a second message. Check with the recipient before resending it."
            );
        }
        let status = match end.status {
            EndStatus::Sent => SendStatus::Sent,
            EndStatus::Rejected => SendStatus::Rejected,
            EndStatus::Failed => SendStatus::Failed,
            EndStatus::Expired => SendStatus::Expired,
        };
        let mut o = self.outcome(job, status, state);
        o.reason = end.reason.map(Cow::into_owned);
        o.errmsg = end.note;
        if let (Some(code), Some(reply)) = (end.errcode, reply) {
            o.errcode = Some(code);
            o.errmsg = Some(reply.errmsg);
            if end.status == EndStatus::Sent {
                o.msgid = reply.msgid;
            }
        }
        o
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The end of a job for an appid that has not authorized the platform.
fn not_authorized(job: &Job) -> End {
    let appid = &job.appid;
    tracing::info!(job_id = %job.id, %appid, "rejected before sending: the appid has not authorized the platform");
    let note = format!("{appid} has not authorized the third-party platform");
    End::refused(EndReason::NotAuthorized.as_str(), note)
}

/// WeChat's "API not authorized for this account" (`api unauthorized`).
const API_UNAUTHORIZED: i64 = 48001;
