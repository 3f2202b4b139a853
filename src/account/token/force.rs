//! Forced `stable_token` refreshes: rare and rationed, because WeChat allows 20 a day (Beijing
//! time) with 30 s between them, and each one also invalidates the token for every other
//! service using the appid. With `stable_token`, a refresh after a rejection is a normal fetch
//! first; a forced one follows only when that fetch hands back the rejected token, and then:
//! - only when the token error followed a *fresh* token, one the endpoint confirmed within the
//!   last minute. A token error on a token WeChat has just vouched for is the one case a new
//!   token may fix;
//! - never when the rejected token was itself forced: a brand-new token that is still
//!   refused means the code is not about the token (41006, which today's tables call
//!   "missing media_id", is the usual culprit), so forcing again would only burn the budget;
//! - only from a daily budget (`token_force_budget`, default 10, well under WeChat's 20 so
//!   other systems keep some), with the 30 s spacing, both shared by all replicas through
//!   Redis when it is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Ask, RefreshState, TokenCache, own_series};
use crate::account::RedisLink;
use crate::account::redis::ForceGrant;
use crate::wechat::ApiReply;

/// Minimum spacing between forced `stable_token` refreshes, as WeChat requires.
const FORCE_SPACING: Duration = Duration::from_secs(30);

/// The forced-refresh budget of one account and where it is shared.
pub(super) struct ForceRefresh {
    /// Forced refreshes allowed per Beijing day.
    pub budget: u32,
    /// Redis, to share the budget and spacing with the other replicas.
    pub shared: Option<Arc<RedisLink>>,
}

/// Forced refreshes taken on one Beijing day, and the last one.
#[derive(Default)]
pub(super) struct LocalForces {
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

impl TokenCache {
    /// `stable_token` handed back the token WeChat just rejected (`fresh` and `forced` say how
    /// that token had been had): the forced refresh's reply when one is due and works.
    pub(super) async fn after_hand_back(
        &self,
        st: &mut RefreshState,
        fresh: bool,
        forced: bool,
    ) -> Option<ApiReply> {
        let budget = self.force.budget;
        if forced {
            tracing::info!(appid = %self.appid, "a forced token was rejected too; the error is not about the token, so no further forced refresh");
            self.skipped("forced_token_rejected");
            return None;
        }
        if !fresh {
            // The first rejection of a token the endpoint has not vouched for lately: take
            // the endpoint's word that it is current and let the job retry after backoff.
            // If WeChat refuses it again, it is fresh then, and a forced refresh may help.
            return None;
        }
        match self.take_force(st).await {
            ForceGrant::Granted(n) => {
                tracing::warn!(appid = %self.appid, forced_today = n, budget, "a fresh stable token was rejected; forcing a refresh");
                self.call_forced(st).await
            }
            ForceGrant::TooSoon => {
                self.skipped("too_soon");
                None
            }
            ForceGrant::Spent => {
                tracing::warn!(appid = %self.appid, budget, "today's forced-refresh budget is spent; using the current token and backing off");
                self.skipped("budget_spent");
                None
            }
        }
    }

    /// Takes a forced refresh from the budget: Redis's when it is configured and answers,
    /// this process' own otherwise.
    async fn take_force(&self, st: &mut RefreshState) -> ForceGrant {
        let now = Instant::now();
        let grant = match self.shared_force().await {
            Some(g) => g,
            None => st.forces.take(self.force.budget, now),
        };
        if let (ForceGrant::Granted(n), Some(own)) = (&grant, own_series(&self.label)) {
            self.metrics
                .token_force_budget_remaining
                .with_label_values(&[own])
                .set(i64::from(self.force.budget.saturating_sub(*n)));
        }
        grant
    }

    async fn shared_force(&self) -> Option<ForceGrant> {
        let slot = self.force.shared.as_ref()?;
        let limiter = slot.get().await?;
        let day = crate::account::limiter::beijing_today().to_string();
        match limiter
            .take_force(&self.appid, &day, self.force.budget, FORCE_SPACING)
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

    /// A forced `stable_token` call: the new token, or `None` when the call failed. Either
    /// way the caller still holds the good token the normal call has just returned, so a
    /// failure neither stops the account nor starts the endpoint's backoff; it is counted
    /// (`force_quota`, `force_error`). A 45009 means WeChat says the day's forced refreshes
    /// are spent: the budget is marked spent too.
    async fn call_forced(&self, st: &mut RefreshState) -> Option<ApiReply> {
        // Boxed for the same reason as a normal fetch: rare, and a large future.
        let result = Box::pin(self.source.fetch(&self.client, &self.appid, Ask::Forced)).await;
        let detail = match result {
            Ok(r) if r.errcode == 45009 => {
                self.count("force_quota");
                self.skipped("budget_spent");
                st.forces.exhaust(self.force.budget);
                if let Some(own) = own_series(&self.label) {
                    self.metrics
                        .token_force_budget_remaining
                        .with_label_values(&[own])
                        .set(0);
                }
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
