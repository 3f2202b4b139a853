//! The Redis-backed, cross-replica part of the limiter.
//!
//! Several replicas serve one account, and autoscaling must never raise that account's rate.
//! With `WXD_REDIS_URL` set, every send reserves a slot in a per-account GCRA schedule kept in
//! Redis by one atomic Lua script (using Redis' own clock, so replicas' clocks don't matter),
//! and successful sends are counted per Beijing day in Redis. N replicas then together hold
//! the configured rate, while governor still paces each process locally.
//!
//! If Redis is unreachable, callers fall back to a local rate of `rate / expected_replicas`
//! (see [`super::AccountGate`]); they never stall or fail jobs because of Redis.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Reserves the next send slot. Returns the microseconds to wait before sending (0 = now).
///
/// KEYS[1]: the account's schedule key. ARGV[1]: emission interval in µs (1e6 / rate).
/// ARGV[2]: burst tolerance in µs (interval × burst). The stored value is the next free slot
/// (the "theoretical arrival time"); a slot may lie up to the burst tolerance in the past, so
/// a short burst goes out at once and the long-run rate is exactly one per interval.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now - tolerance)
local next_tat = slot + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 60000)
local wait = slot - now
if wait < 0 then wait = 0 end
return wait
"#;

/// Takes one forced `stable_token` refresh from the account's daily budget, shared by every
/// replica. WeChat allows 20 forced refreshes a day with 30 s between them, and each one
/// invalidates the token for every other service on the appid, so the budget and the spacing
/// must be the account's, not each replica's.
///
/// KEYS[1]: the spacing key, KEYS[2]: the day's counter. ARGV[1]: spacing in ms, ARGV[2]: the
/// daily budget. Returns the number taken today (>= 1) on success, `-1` if the last forced
/// refresh is less than the spacing ago, `-2` if today's budget is spent.
const TAKE_FORCE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n >= tonumber(ARGV[2]) then return -2 end
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 2 * 86400)
return n
"#;

/// The answer of [`SharedLimiter::take_force`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceGrant {
    /// Granted; the number of forced refreshes taken today, this one included.
    Granted(u32),
    /// Another forced refresh was made less than the spacing ago.
    TooSoon,
    /// Today's budget is spent.
    Spent,
}

/// A classic access token shared by the replicas of one account through Redis. The value is
/// an access token: Redis must be as private as the worker's own environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    pub value: String,
    /// When the replica that fetched it got it (Unix ms).
    pub fetched_ms: i64,
    /// When WeChat says it expires (Unix ms).
    pub expires_ms: i64,
}

/// A connection to the shared limiter.
#[derive(Clone)]
pub struct SharedLimiter {
    conn: ConnectionManager,
    script: redis::Script,
}

/// How long a Redis call may take before the caller falls back to local limits.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

impl SharedLimiter {
    /// Connects (with a bounded wait). The connection manager reconnects by itself later.
    pub async fn connect(url: &str) -> redis::RedisResult<SharedLimiter> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))??;
        Ok(SharedLimiter {
            conn,
            script: redis::Script::new(RESERVE),
        })
    }

    /// Reserves a slot for `appid` at `rate_per_sec` with `burst`; returns how long to wait.
    pub async fn reserve(
        &self,
        appid: &str,
        rate_per_sec: u32,
        burst: u32,
    ) -> redis::RedisResult<Duration> {
        let interval_us = 1_000_000u64 / u64::from(rate_per_sec.max(1));
        let tolerance_us = interval_us * u64::from(burst.saturating_sub(1));
        let mut conn = self.conn.clone();
        let mut call = self.script.key(format!("wxdispatch:rate:{appid}"));
        call.arg(interval_us).arg(tolerance_us);
        let wait_us = timed(call.invoke_async::<u64>(&mut conn)).await?;
        Ok(Duration::from_micros(wait_us))
    }

    /// Takes a forced token refresh from `appid`'s budget for Beijing day `day`.
    pub async fn take_force(
        &self,
        appid: &str,
        day: &str,
        per_day: u32,
        spacing: Duration,
    ) -> redis::RedisResult<ForceGrant> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(TAKE_FORCE);
        let mut call = script.key(format!("wxdispatch:force:last:{appid}"));
        call.key(format!("wxdispatch:force:{appid}:{day}"))
            .arg(spacing.as_millis() as u64)
            .arg(per_day);
        let n = timed(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(match n {
            -1 => ForceGrant::TooSoon,
            n if n < 0 => ForceGrant::Spent,
            n => ForceGrant::Granted(n as u32),
        })
    }

    /// The classic access token the replicas share: `(value, fetched at, expires at)` in
    /// Unix ms, if one is stored.
    pub async fn shared_token(&self, appid: &str) -> redis::RedisResult<Option<SharedToken>> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("wxdispatch:token:{appid}"));
        let raw = timed(cmd.query_async::<Option<String>>(&mut conn)).await?;
        Ok(raw.and_then(|r| {
            let mut parts = r.splitn(3, ':');
            Some(SharedToken {
                fetched_ms: parts.next()?.parse().ok()?,
                expires_ms: parts.next()?.parse().ok()?,
                value: parts.next()?.to_string(),
            })
        }))
    }

    /// Tries to become the one replica that fetches the next classic token (a lock that
    /// expires by itself after `hold`, should its holder die).
    pub async fn lock_token_fetch(&self, appid: &str, hold: Duration) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("wxdispatch:token:lock:{appid}"))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis() as u64);
        let got = timed(cmd.query_async::<Option<String>>(&mut conn)).await?;
        Ok(got.is_some())
    }

    /// Stores the token this replica fetched for the others, and releases the fetch lock.
    pub async fn store_token(&self, appid: &str, t: &SharedToken) -> redis::RedisResult<()> {
        let ttl_ms = (t.expires_ms - t.fetched_ms).max(1);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(format!("wxdispatch:token:{appid}"))
            .arg(format!("{}:{}:{}", t.fetched_ms, t.expires_ms, t.value))
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .del(format!("wxdispatch:token:lock:{appid}"))
            .ignore();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Releases the fetch lock without storing a token (the fetch failed).
    pub async fn unlock_token_fetch(&self, appid: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("wxdispatch:token:lock:{appid}"));
        timed(cmd.query_async::<()>(&mut conn)).await
    }

    /// Counts one successful send for `appid` on Beijing day `day`; returns today's total.
    pub async fn count_sent(&self, appid: &str, day: &str) -> redis::RedisResult<u64> {
        let key = format!("wxdispatch:sent:{appid}:{day}");
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(&key, 1u64)
            .expire(&key, 2 * 86_400)
            .ignore();
        let fut = pipe.query_async::<(u64,)>(&mut conn);
        let (n,) = tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timed out")))??;
        Ok(n)
    }
}

/// A Redis call bounded by [`CALL_TIMEOUT`], so a slow Redis costs a fallback, not a stall.
async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timed out")))?
}

/// A lazily connected [`SharedLimiter`]: Redis may be down at start or go away later; the
/// worker keeps running on local limits and reconnects in the background of later calls.
pub struct RedisLink {
    url: String,
    inner: tokio::sync::Mutex<SlotState>,
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
        }
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
                st.limiter = Some(l.clone());
                Some(l)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis limiter unreachable; using the local fallback rate");
                st.next_try = std::time::Instant::now() + RETRY_EVERY;
                None
            }
        }
    }

    /// Drops the connection after a failed call, so the next calls use the fallback for a
    /// while instead of each waiting for a timeout.
    pub async fn failed(&self) {
        let mut st = self.inner.lock().await;
        st.limiter = None;
        st.next_try = std::time::Instant::now() + RETRY_EVERY;
    }
}
