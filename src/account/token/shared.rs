//! The classic token shared by all replicas through Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Ask, RefreshState, Token, TokenCache, TokenError};

/// Why the shared classic token could not be had.
pub(super) enum SharedFetch {
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

impl TokenCache {
    /// The classic token shared by all replicas through Redis, the way WxJava's Redis config
    /// storage does it: use the stored token unless it is the one just rejected or about to
    /// expire; otherwise one replica (holding a lock that expires by itself) fetches a new one
    /// and stores it, while the others wait for it. Every classic fetch invalidates the
    /// previous token after five minutes, so replicas fetching on their own would keep
    /// killing each other's tokens.
    pub(super) async fn classic_shared(
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
                    return Ok(self.install(st, t.value, (fetched_at, now + left, None), false));
                }
            }
            if limiter.lock_token_fetch(&self.appid, LOCK_HOLD).await? {
                let reply = match self.call(st, Ask::Current).await {
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
                return Ok(self.install(st, value, (now, expires_at, None), false));
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
}
