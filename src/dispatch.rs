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
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use rand::Rng;

use crate::config::Config;
use crate::job::Job;
use crate::limiter::{AccountGate, Admission};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, SendStatus};
use crate::wechat::errcode::{self, Action};
use crate::wechat::{SendError, TokenError, TokenSource, WechatClient};

/// WeChat deduplicates `(openid, client_msg_id)` for 10 minutes; keep a safety margin.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(9 * 60 + 30);

/// Retry bookkeeping that travels with a job through the delay queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Tries made so far (sends and token fetches).
    pub attempts: u32,
    /// When the job was first seen by a worker (Unix ms).
    pub first_seen_ms: i64,
    /// When the first attempt that may have reached WeChat was made (Unix ms).
    pub maybe_sent_ms: Option<i64>,
}

impl RetryState {
    pub fn fresh() -> RetryState {
        RetryState {
            attempts: 0,
            first_seen_ms: Utc::now().timestamp_millis(),
            maybe_sent_ms: None,
        }
    }
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

    /// The delay before retry number `n` (0-based): exponential with full jitter, i.e. a
    /// uniform pick between zero and the exponential cap. backon gives the capped schedule.
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
    pub tokens: Arc<TokenSource>,
}

/// Sends jobs according to the policy. Shared by all in-flight tasks.
pub struct Dispatcher {
    client: WechatClient,
    accounts: HashMap<String, Arc<AccountCtx>>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
}

/// What one try produced.
enum Try {
    Done(Disposition),
    Again { reason: String, wait: Duration },
}

impl Dispatcher {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Dispatcher {
        let client = WechatClient::new(
            &config.api_base,
            Duration::from_millis(config.http_timeout_ms),
        );
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                metrics.init_account(&a.appid);
                let ctx = AccountCtx {
                    gate: AccountGate::new(
                        &a.appid,
                        a.rate_per_sec,
                        a.daily_quota,
                        Duration::from_secs(config.quota_probe_secs.max(1)),
                        metrics.clone(),
                    ),
                    tokens: Arc::new(TokenSource::new(
                        a.appid.clone(),
                        a.secret.clone(),
                        config.token_mode,
                        client.clone(),
                        metrics.clone(),
                        Duration::from_secs(config.account_stop_probe_secs.max(1)),
                    )),
                };
                (a.appid.clone(), Arc::new(ctx))
            })
            .collect();
        Dispatcher {
            client,
            accounts,
            metrics,
            policy: RetryPolicy::from_config(config),
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
            match self.try_once(job, acct, &mut state).await {
                Try::Done(d) => return d,
                Try::Again { reason, wait } => {
                    let appid = job.appid.as_str();
                    let now = Utc::now().timestamp_millis();
                    let elapsed = Duration::from_millis((now - state.first_seen_ms).max(0) as u64);
                    let budget_left = self.policy.budget.saturating_sub(elapsed);
                    if state.attempts >= self.policy.max_attempts || budget_left.is_zero() {
                        let mut o = self.outcome(job, SendStatus::Failed, &state);
                        o.reason = Some(reason);
                        return Disposition::Final(o);
                    }
                    if let Some(first) = state.maybe_sent_ms {
                        let since = Duration::from_millis((now - first).max(0) as u64);
                        if since + wait >= DEDUP_WINDOW {
                            let mut o = self.outcome(job, SendStatus::Failed, &state);
                            o.reason = Some("unknown_delivery".into());
                            tracing::warn!(
                                job_id = %job.id, appid,
                                "a possibly delivered message can no longer be retried inside \
                                 WeChat's dedup window; giving up as unknown_delivery"
                            );
                            return Disposition::Final(o);
                        }
                    }
                    self.metrics
                        .retries_total
                        .with_label_values(&[appid, &reason])
                        .inc();
                    tracing::debug!(job_id = %job.id, appid, %reason, wait_ms = wait.as_millis() as u64, "retrying");
                    if wait > self.policy.inline_max {
                        return Disposition::Defer {
                            delay: wait,
                            reason: "backoff",
                            state,
                        };
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn try_once(&self, job: &Job, acct: &AccountCtx, state: &mut RetryState) -> Try {
        let appid = job.appid.as_str();
        let probe = match acct.gate.admit() {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Later { delay, reason } => {
                if delay <= self.policy.inline_max {
                    tokio::time::sleep(delay).await;
                    return Try::Again {
                        reason: reason.into(),
                        wait: Duration::ZERO,
                    };
                }
                return Try::Done(self.defer(appid, delay, reason, *state));
            }
        };
        acct.gate.pace().await;
        let token = match acct.tokens.get().await {
            Ok(t) => t,
            Err(TokenError::Stopped { retry_in, .. }) => {
                if probe {
                    acct.gate.probe_done();
                }
                return Try::Done(self.defer(appid, retry_in, "account_stopped", *state));
            }
            Err(TokenError::Unavailable { retry_in, .. }) => {
                if probe {
                    acct.gate.probe_done();
                }
                state.attempts += 1;
                return Try::Again {
                    reason: "token_unavailable".into(),
                    wait: retry_in.max(self.policy.delay(state.attempts - 1)),
                };
            }
        };
        state.attempts += 1;
        let started = std::time::Instant::now();
        let result = self
            .client
            .send_template(&token.value, job.body.clone())
            .await;
        self.metrics
            .send_duration_seconds
            .with_label_values(&[appid])
            .observe(started.elapsed().as_secs_f64());
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                self.count_api(appid, &e.label());
                if probe {
                    acct.gate.probe_done();
                }
                if e.maybe_sent() && state.maybe_sent_ms.is_none() {
                    state.maybe_sent_ms = Some(Utc::now().timestamp_millis());
                }
                if let SendError::Status(s) = e
                    && (400..500).contains(&s)
                {
                    // A 4xx from WeChat's front end will not change on retry.
                    return Try::Done(Disposition::Final(self.final_error(
                        job,
                        state,
                        SendStatus::Rejected,
                        None,
                        e.label(),
                    )));
                }
                tracing::info!(job_id = %job.id, appid, error = %e, attempt = state.attempts, "send failed");
                return Try::Again {
                    reason: e.label(),
                    wait: self.policy.delay(state.attempts - 1),
                };
            }
        };
        let code = reply.errcode;
        self.count_api(appid, &code.to_string());
        let action = errcode::action(code);
        if action != Action::PauseQuota && probe {
            acct.gate.probe_done();
        }
        match action {
            Action::Success => {
                acct.gate.on_sent(probe);
                let mut o = self.outcome(job, SendStatus::Sent, state);
                o.errcode = Some(0);
                o.errmsg = Some(reply.errmsg);
                o.msgid = reply.msgid;
                Try::Done(Disposition::Final(o))
            }
            Action::Reject => {
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
                acct.tokens.invalidate(&token).await;
                Try::Again {
                    reason: errcode::reason(code).into_owned(),
                    wait: Duration::ZERO,
                }
            }
            Action::Retry => Try::Again {
                reason: errcode::reason(code).into_owned(),
                wait: self.policy.delay(state.attempts - 1),
            },
            Action::SlowDown => {
                let wait = acct.gate.slow_down();
                tracing::warn!(job_id = %job.id, appid, errcode = code, "minute limit hit; slowing down until the next minute");
                // Not the job's fault: give the attempt back.
                state.attempts -= 1;
                Try::Done(self.defer(appid, wait, "rate_minute", *state))
            }
            Action::PauseQuota => {
                acct.gate.pause_quota();
                state.attempts -= 1;
                let delay = self.policy.inline_max + Duration::from_secs(1);
                let delay = delay.max(Duration::from_secs(1));
                Try::Done(self.defer(appid, delay, "quota", *state))
            }
            Action::StopAccount => {
                tracing::error!(job_id = %job.id, appid, errcode = code, errmsg = %reply.errmsg,
                    "WeChat refused the account's configuration (IP whitelist or API permission); \
                     deferring its jobs");
                state.attempts -= 1;
                self.metrics
                    .account_stopped
                    .with_label_values(&[appid])
                    .set(1);
                Try::Done(self.defer(appid, Duration::from_secs(300), "account_stopped", *state))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_exponential_cap() {
        let p = RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            budget: Duration::from_secs(60),
            inline_max: Duration::from_secs(3),
        };
        for _ in 0..50 {
            assert!(p.delay(0) <= Duration::from_millis(100));
            assert!(p.delay(2) <= Duration::from_millis(400));
            assert!(p.delay(20) <= Duration::from_secs(2));
        }
    }
}
