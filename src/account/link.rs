//! The worker's link to Redis: connected lazily, dropped after a failed call and tried again
//! a few seconds later, and the batch of counts that goes over it every 250 ms
//! ([`super::batch`]).

use std::time::Duration;

use super::batch::Batch;
use super::redis::SharedLimiter;

/// A lazily connected [`SharedLimiter`]: Redis may be down at start or go away later; the
/// worker keeps running on local limits and reconnects in the background of later calls.
pub struct RedisLink {
    url: String,
    inner: tokio::sync::Mutex<SlotState>,
    /// Whether the last call or connection attempt reached Redis (true until one fails).
    reachable: std::sync::atomic::AtomicBool,
    /// The gates whose counts go in the next call.
    batch: Batch,
}

struct SlotState {
    limiter: Option<SharedLimiter>,
    next_try: std::time::Instant,
}

/// Pause between reconnection attempts while Redis is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(5);

impl RedisLink {
    pub fn new(url: &str) -> RedisLink {
        RedisLink {
            url: url.to_string(),
            inner: tokio::sync::Mutex::new(SlotState {
                limiter: None,
                next_try: std::time::Instant::now(),
            }),
            batch: Batch::default(),
            reachable: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Whether Redis answered the last call or connection attempt, for a send that made no
    /// call itself.
    pub(super) fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_reachable(&self, up: bool) {
        self.reachable
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The limiter, or `None` while Redis is considered unreachable.
    pub async fn get(&self) -> Option<SharedLimiter> {
        let mut st = self.inner.lock().await;
        if let Some(l) = &st.limiter {
            return Some(l.clone());
        }
        if std::time::Instant::now() < st.next_try {
            return None;
        }
        match SharedLimiter::connect(&self.url).await {
            Ok(l) => {
                tracing::info!("connected to the shared Redis limiter");
                self.set_reachable(true);
                st.limiter = Some(l.clone());
                Some(l)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis limiter unreachable; using the local fallback rate");
                self.set_reachable(false);
                st.next_try = std::time::Instant::now() + RETRY_EVERY;
                None
            }
        }
    }

    /// Drops the connection after a failed call, so the next calls use the fallback for a
    /// while instead of each waiting for a timeout.
    pub async fn failed(&self) {
        self.set_reachable(false);
        let mut st = self.inner.lock().await;
        st.limiter = None;
        st.next_try = std::time::Instant::now() + RETRY_EVERY;
    }
}
