//! What a token source's answer means for the account: a token to use, a transient failure
//! (the next fetch waits an exponentially growing pause), or a configuration error or the
//! endpoint's daily limit, which stops the account until a probe succeeds.

use std::time::{Duration, Instant};

use super::{Ask, RefreshState, TokenCache, TokenError};
use crate::config::TokenMode;
use crate::policy::errcode::{self, Action};
use crate::wechat::{ApiReply, SendError};

impl TokenCache {
    /// A call of the token source whose failure counts: it may stop the account or start the
    /// backoff.
    pub(super) async fn call(
        &self,
        st: &mut RefreshState,
        ask: Ask<'_>,
    ) -> Result<ApiReply, TokenError> {
        // Boxed: a token fetch is rare, and its future (an HTTP call, or the platform's
        // Redis and API calls) would otherwise be part of every job's future, copied per job.
        let result = Box::pin(self.source.fetch(&self.client, &self.appid, ask)).await;
        self.interpret(st, result)
    }

    /// What a token endpoint's answer means: a reply to use, a transient failure, or a stop.
    fn interpret(
        &self,
        st: &mut RefreshState,
        result: Result<ApiReply, SendError>,
    ) -> Result<ApiReply, TokenError> {
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
        if code == crate::component::NOT_AUTHORIZED && self.mode() == TokenMode::Component {
            // Not a failure of the source: no backoff, so an authorization that arrives
            // later takes effect with the next job.
            self.count("not_authorized");
            return Err(TokenError::NotAuthorized {
                appid: self.appid.clone(),
            });
        }
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

    pub(super) fn transient(&self, st: &mut RefreshState, detail: String) -> TokenError {
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

    pub(super) fn count(&self, result: &str) {
        self.metrics
            .token_refreshes_total
            .with_label_values(&[self.label.as_str(), result])
            .inc();
    }
}
