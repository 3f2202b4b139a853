//! The Redis-backed, cross-replica part of the limiter.
//!
//! Several replicas serve one account, and autoscaling must never raise that account's rate.
//! With `WXD_REDIS_URL` set, each account's sends follow one GCRA schedule kept in Redis by
//! atomic Lua scripts (on Redis' own clock, so replicas' clocks don't matter): a replica leases
//! a batch of consecutive slots in one call and spends them locally ([`super::lease`],
//! [`super::shared`]), and the day's successful sends are added to a per-Beijing-day count in
//! the same call or in one `INCRBY` now and then. N replicas then together hold the configured
//! rate.
//!
//! If Redis is unreachable, callers fall back to a local rate of `rate / expected_replicas`
//! (see [`super::AccountGate`]); they never stall or fail jobs because of Redis.

use std::time::Duration;

use chrono::NaiveDate;
use redis::aio::ConnectionManager;

use super::count::Flush;
use super::lease::GiveBack;

/// Leases the next `k` slots of an account's schedule, and adds this replica's sends not yet
/// counted to the day's count, in one call.
///
/// KEYS[1]: the account's schedule key, KEYS[2]: its count key for the day. ARGV[1]: emission
/// interval in µs (1e6 / rate), ARGV[2]: how far in the past the lease may start, in µs (at
/// most the burst tolerance, interval × (burst − 1)), ARGV[3]: slots to lease (k), ARGV[4]:
/// sends to add to the count (0: just read it), ARGV[5]: slots used by sends made without a
/// lease, placed from now on before the lease (see [`SETTLE`]), as are those every replica
/// added to KEYS[3] (see [`SharedLimiter::tally`]), which the lease takes. The stored value is the schedule's end (the
/// "theoretical arrival time"); the lease starts there or up to ARGV[2] in the past, whichever
/// is later, so a short burst goes out at once and the long-run rate is exactly one per
/// interval. Returns `{first slot − now (µs, ≤ 0 when
/// in the past), the schedule's new end (µs), today's count}`.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local record = tonumber(ARGV[5])
local unleased = redis.call('GET', KEYS[3])
if unleased then
  record = record + tonumber(unleased)
  redis.call('DEL', KEYS[3])
end
if record > 0 then tat = math.max(tat, now) + record * interval end
local slot = math.max(tat, now - tolerance)
local next_tat = slot + tonumber(ARGV[3]) * interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 60000)
local add = tonumber(ARGV[4])
local total
if add > 0 then
  total = redis.call('INCRBY', KEYS[2], add)
  if total == add then redis.call('EXPIRE', KEYS[2], 172800) end
else
  total = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {slot - now, next_tat, total}
"#;

/// Gives a lease's unused slots back and adds a gate's sends and unleased slots, in one call.
///
/// KEYS[1]: the schedule key, KEYS[2]: the count key, KEYS[3]: the unleased slots' key (as
/// [`SharedLimiter::tally`] adds them, for the next lease to place). ARGV[1]: the schedule's
/// end the lease left (µs), ARGV[2]: how far to move it back (µs, 0: nothing to give back),
/// ARGV[3]: sends to add to the count (0: none), ARGV[4]: slots used without a lease (0:
/// none), ARGV[5]: how long the unleased slots are kept (ms). The slots go back only while
/// the schedule still ends where the lease left it: once another replica has reserved after
/// them they stay used, so no slot is ever handed out twice. Returns `{1 if given back else
/// 0, today's count or -1}`.
const SETTLE: &str = r#"
local given = 0
local back = tonumber(ARGV[2])
if back > 0 and tonumber(redis.call('GET', KEYS[1]) or '-1') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], string.format('%.0f', tonumber(ARGV[1]) - back), 'KEEPTTL')
  given = 1
end
local unleased = tonumber(ARGV[4])
if unleased > 0 then
  redis.call('INCRBY', KEYS[3], unleased)
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
local add = tonumber(ARGV[3])
local total = -1
if add > 0 then
  total = redis.call('INCRBY', KEYS[2], add)
  if total == add then redis.call('EXPIRE', KEYS[2], 172800) end
end
return {given, total}
"#;

/// What a [`SharedLimiter::settle`] call does for a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The gate's id (see [`super::limiter::GateId`]).
    pub id: String,
    /// The Beijing day whose count `add` goes to.
    pub day: NaiveDate,
    /// Leased slots to give back.
    pub back: Option<GiveBack>,
    /// Sends to add to the day's count.
    pub add: u64,
    /// Slots used by sends made without a lease.
    pub unleased: u64,
}

/// What one gate adds in a [`SharedLimiter::tally`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The gate's id (see [`super::limiter::GateId`]).
    pub id: String,
    /// The Beijing day whose count `add` goes to.
    pub day: NaiveDate,
    /// Sends to add to the day's count.
    pub add: u64,
    /// Whether the day's count key may not exist yet (then it gets its expiry).
    pub new_day: bool,
    /// Slots used by sends made without a lease.
    pub unleased: u64,
}

/// What a [`Settlement`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The slots went back.
    pub given: bool,
    /// The day's count after the addition, if anything was added.
    pub sent_today: Option<u64>,
}

/// What [`SharedLimiter::lease`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leased {
    /// The first slot's time relative to Redis' "now" (negative: in the past).
    pub(super) first_offset_us: i64,
    /// The schedule's end after this lease (µs on Redis' clock).
    pub end_us: u64,
    /// The day's count after the addition.
    pub sent_today: u64,
}

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
    lease: redis::Script,
    settle: redis::Script,
}

/// How long a Redis call may take before the caller falls back to local limits.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(1);

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
            lease: redis::Script::new(LEASE),
            settle: redis::Script::new(SETTLE),
        })
    }

    /// Reserves one slot for `appid` at `rate_per_sec` with `burst`; returns how long to wait.
    pub async fn reserve(
        &self,
        appid: &str,
        rate_per_sec: u32,
        burst: u32,
    ) -> redis::RedisResult<Duration> {
        let (interval_us, tolerance_us) = schedule_us(rate_per_sec, burst);
        let nothing = Flush {
            add: 0,
            day: NaiveDate::default(),
            unleased: 0,
        };
        let l = self
            .lease(appid, interval_us, tolerance_us, 1, nothing)
            .await?;
        Ok(Duration::from_micros(l.first_offset_us.max(0) as u64))
    }

    /// Leases `slots` slots of `id`'s schedule, starting at most `credit_us` in the past, and
    /// adds `flush` to its count and schedule (see [`LEASE`]).
    pub(super) async fn lease(
        &self,
        id: &str,
        interval_us: u64,
        credit_us: u64,
        slots: u32,
        flush: Flush,
    ) -> redis::RedisResult<Leased> {
        let mut conn = self.conn.clone();
        let mut call = self.lease.key(rate_key(id));
        call.key(count_key(id, &flush.day.to_string()))
            .key(unleased_key(id))
            .arg(interval_us)
            .arg(credit_us)
            .arg(slots)
            .arg(flush.add)
            .arg(flush.unleased);
        let (first_offset_us, end_us, sent_today) =
            timed(call.invoke_async::<(i64, i64, i64)>(&mut conn)).await?;
        Ok(Leased {
            first_offset_us,
            end_us: end_us.max(0) as u64,
            sent_today: sent_today.max(0) as u64,
        })
    }

    /// Settles one gate (see [`SETTLE`]).
    pub async fn settle(&self, s: &Settlement) -> redis::RedisResult<Settled> {
        let mut conn = self.conn.clone();
        let mut call = self.settle.key(rate_key(&s.id));
        call.key(count_key(&s.id, &s.day.to_string()))
            .key(unleased_key(&s.id))
            .arg(s.back.map_or(0, |b| b.end_us))
            .arg(s.back.map_or(0, |b| b.span_us()))
            .arg(s.add)
            .arg(s.unleased)
            .arg(UNLEASED_TTL_MS);
        let (given, total) = timed(call.invoke_async::<(i64, i64)>(&mut conn)).await?;
        Ok(Settled {
            given: given == 1,
            sent_today: u64::try_from(total).ok(),
        })
    }

    /// Adds every gate's sends to its day count and its unleased slots to what the account's
    /// next lease places first, in one pipeline of plain commands: at one account per send
    /// (a platform's quiet authorizers) a script per gate cost Redis about 15 µs each, these
    /// a few. Returns each gate's day count after the addition (`None` where it added none).
    pub async fn tally(&self, all: &[Tally]) -> redis::RedisResult<Vec<Option<u64>>> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for t in all {
            if t.add > 0 {
                let key = count_key(&t.id, &t.day.to_string());
                pipe.cmd("INCRBY").arg(&key).arg(t.add);
                if t.new_day {
                    pipe.cmd("EXPIRE").arg(&key).arg(172_800).ignore();
                }
            }
            if t.unleased > 0 {
                let key = unleased_key(&t.id);
                pipe.cmd("INCRBY").arg(&key).arg(t.unleased).ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(UNLEASED_TTL_MS).ignore();
            }
        }
        let counts: Vec<i64> = if all.iter().any(|t| t.add > 0) {
            timed(pipe.query_async(&mut conn)).await?
        } else {
            timed(pipe.query_async::<()>(&mut conn)).await?;
            Vec::new()
        };
        let mut counts = counts.into_iter();
        all.iter()
            .map(|t| {
                if t.add == 0 {
                    return Ok(None);
                }
                let n = counts.next().ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::TypeError,
                        "tally: one count per gate expected",
                    ))
                })?;
                Ok(u64::try_from(n).ok())
            })
            .collect()
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
}

/// The schedule's emission interval and burst tolerance in µs, for `rate_per_sec` with `burst`.
pub(super) fn schedule_us(rate_per_sec: u32, burst: u32) -> (u64, u64) {
    let interval_us = 1_000_000u64 / u64::from(rate_per_sec.max(1));
    (
        interval_us,
        interval_us * u64::from(burst.saturating_sub(1)),
    )
}

fn rate_key(id: &str) -> String {
    format!("wxdispatch:rate:{id}")
}

fn count_key(id: &str, day: &str) -> String {
    format!("wxdispatch:sent:{id}:{day}")
}

/// Slots used by sends made without a lease, not yet in the schedule: the next lease of the
/// account, by any replica, places them first ([`LEASE`]).
fn unleased_key(id: &str) -> String {
    format!("wxdispatch:unleased:{id}")
}

/// How long unleased slots wait for a lease: longer than any schedule's tolerance, after
/// which they could not delay a lease anyway.
const UNLEASED_TTL_MS: u64 = 60_000;

/// A Redis call bounded by [`CALL_TIMEOUT`], so a slow Redis costs a fallback, not a stall.
async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timed out")))?
}
