//! Refresh ahead on use: a send that finds the token past its refresh point starts one
//! background refresh and goes on with the still-valid token, so no job waits for it. Nothing
//! runs for an idle account: with thousands of a platform's authorizers, most idle, a timer
//! each would cost more than the refreshes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Token, TokenCache, TokenError};

/// How long after a refresh ahead was started the next one may start: a fraction of the
/// window, so that a replica whose refresh found another one's lock taken reads the new token
/// soon after that one stored it, without asking Redis on every send.
fn spacing(token: &Token) -> Duration {
    ((token.expires_at.saturating_duration_since(token.refresh_at)) / 8)
        .clamp(Duration::from_millis(100), Duration::from_secs(2))
}

impl TokenCache {
    /// [`TokenCache::get`] for a send, which also starts the refresh ahead of a token past
    /// its refresh point, if its source refreshes on use.
    pub async fn get_for_send(self: &Arc<Self>) -> Result<Arc<Token>, TokenError> {
        let token = self.get().await?;
        self.refresh_ahead_on_use(&token);
        Ok(token)
    }

    /// Starts a background refresh of `token`, just handed out, if its source refreshes on
    /// use, it is past its refresh point and no refresh ahead started within [`spacing`].
    fn refresh_ahead_on_use(self: &Arc<Self>, token: &Arc<Token>) {
        let now = Instant::now();
        if !self.source.refreshes_ahead_on_use() || now < token.refresh_at {
            return;
        }
        {
            let mut next = self.ahead_next.lock().expect("ahead lock");
            if next.is_some_and(|n| now < n) {
                return;
            }
            *next = Some(now + spacing(token));
        }
        let cache = self.clone();
        let seen = token.clone();
        tokio::spawn(async move {
            let mut st = cache.refresh.lock().await;
            // A refresh (or an invalidation) since the send saw it: nothing left to do.
            let current = cache.current.lock().expect("token lock").clone();
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &seen)) {
                return;
            }
            if let Err(e) = cache.fetch_locked(&mut st).await {
                tracing::warn!(appid = %cache.appid, error = %e, "refreshing the token ahead of its expiry failed; the current one is used meanwhile");
            }
        });
    }
}
