//! The AMQP headers wxdispatch reads and writes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::dispatch::RetryState;

/// Tries made so far, so the retry budget survives a trip through the delay queue.
pub const ATTEMPTS: &str = "x-wxd-attempts";
/// When a worker first saw the job (Unix ms).
pub const FIRST_SEEN: &str = "x-wxd-first-seen";
/// When an attempt that may have reached WeChat was first made (Unix ms).
pub const MAYBE_SENT: &str = "x-wxd-maybe-sent";
/// Why a job was deferred or dead-lettered (a machine word).
pub const REASON: &str = "x-wxd-reason";
/// A human explanation of a dead-lettered job.
pub const ERROR: &str = "x-wxd-error";
/// The batch a per-recipient job came from.
pub const BATCH: &str = "x-wxd-batch";
/// The queue a dead-lettered job was consumed from.
pub const SOURCE_QUEUE: &str = "x-wxd-source-queue";

fn get_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let table = props.headers().as_ref()?;
    match table.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => s.to_string().parse().ok(),
        _ => None,
    }
}

/// The retry state carried by a delivery, or a fresh one for a first delivery.
pub fn retry_state(props: &BasicProperties) -> RetryState {
    let mut st = RetryState::fresh();
    if let Some(a) = get_i64(props, ATTEMPTS) {
        st.attempts = a.clamp(0, 1_000) as u32;
    }
    if let Some(t) = get_i64(props, FIRST_SEEN) {
        st.first_seen_ms = t;
    }
    st.maybe_sent_ms = get_i64(props, MAYBE_SENT);
    st
}

/// A copy of `props` with the retry state and `reason` written into its headers.
pub fn with_retry_state(props: &BasicProperties, st: &RetryState, reason: &str) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(
        ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(st.attempts)),
    );
    table.insert(FIRST_SEEN.into(), AMQPValue::LongLongInt(st.first_seen_ms));
    if let Some(m) = st.maybe_sent_ms {
        table.insert(MAYBE_SENT.into(), AMQPValue::LongLongInt(m));
    }
    table.insert(REASON.into(), string(reason));
    props.clone().with_headers(table)
}

/// A header string value.
pub fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Inserts a string header.
pub fn insert(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(ShortString::from(key), string(value));
}

/// Reads a string header.
pub fn get_str(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_state_round_trips_through_headers() {
        let st = RetryState {
            attempts: 3,
            first_seen_ms: 1_700_000_000_000,
            maybe_sent_ms: Some(1_700_000_001_000),
        };
        let props = with_retry_state(&BasicProperties::default(), &st, "backoff");
        assert_eq!(retry_state(&props), st);
        assert_eq!(get_str(&props, REASON).as_deref(), Some("backoff"));
    }

    #[test]
    fn a_first_delivery_has_a_fresh_state() {
        let st = retry_state(&BasicProperties::default());
        assert_eq!(st.attempts, 0);
        assert!(st.maybe_sent_ms.is_none());
    }
}
