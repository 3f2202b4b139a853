//! The AMQP headers wxdispatch reads and writes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::policy::RetryState;

/// Tries made so far, so the retry budget survives a trip through the delay queue.
pub(crate) const ATTEMPTS: &str = "x-wxd-attempts";
/// When a worker first saw the job (Unix ms).
pub(crate) const FIRST_SEEN: &str = "x-wxd-first-seen";
/// When an attempt that may have reached WeChat was first made (Unix ms).
pub(crate) const MAYBE_SENT: &str = "x-wxd-maybe-sent";
/// Time already charged to transient errors (ms), so the retry budget counts errors only,
/// across trips through the delay queue, and never the time a job waited on its account.
pub(crate) const TRANSIENT_MS: &str = "x-wxd-transient-ms";
/// The earliest time (Unix ms) a deferred job may run. Delay tiers round down, so a job can
/// come back early; it is then parked again for the rest, without using an attempt.
pub(crate) const NOT_BEFORE: &str = "x-wxd-not-before";
/// Why a job was deferred or dead-lettered (a machine word).
pub(crate) const REASON: &str = "x-wxd-reason";
/// A human explanation of a dead-lettered job.
pub(crate) const ERROR: &str = "x-wxd-error";
/// The batch a per-recipient job came from.
pub(crate) const BATCH: &str = "x-wxd-batch";
/// The queue a dead-lettered job was consumed from.
pub(crate) const SOURCE_QUEUE: &str = "x-wxd-source-queue";
/// Deliveries that ended in a panic, counted by the worker itself on a classic jobs queue,
/// which (unlike a quorum queue) keeps no delivery count.
pub(crate) const DELIVERIES: &str = "x-wxd-deliveries";
/// The delivery count a quorum queue keeps (RabbitMQ's own header).
const BROKER_DELIVERY_COUNT: &str = "x-delivery-count";

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
    if let Some(t) = get_i64(props, TRANSIENT_MS) {
        st.transient_ms = t.max(0) as u64;
    }
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
    table.insert(
        TRANSIENT_MS.into(),
        AMQPValue::LongLongInt(i64::try_from(st.transient_ms).unwrap_or(i64::MAX)),
    );
    table.insert(REASON.into(), string(reason));
    props.clone().with_headers(table)
}

/// How many times this job was delivered before this delivery: the quorum queue's own count
/// when there is one, else the worker's [`DELIVERIES`] plus one if the broker says it is
/// redelivering (after a lost connection, which the worker could not count).
pub(crate) fn deliveries_before(props: &BasicProperties, redelivered: bool) -> u64 {
    match get_i64(props, BROKER_DELIVERY_COUNT) {
        Some(n) => n.max(0) as u64,
        None => get_i64(props, DELIVERIES).unwrap_or(0).max(0) as u64 + u64::from(redelivered),
    }
}

/// A copy of `props` that says the job was delivered `n` times already.
pub(crate) fn with_deliveries(props: &BasicProperties, n: u64) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(
        DELIVERIES.into(),
        AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
    );
    props.clone().with_headers(table)
}

/// When a deferred job may run again (Unix ms), if it was deferred.
pub(crate) fn not_before_ms(props: &BasicProperties) -> Option<i64> {
    get_i64(props, NOT_BEFORE)
}

/// How long a deferred job must still wait, if it came back early (the policy's rule).
pub fn wait_left(props: &BasicProperties, now_ms: i64) -> Option<std::time::Duration> {
    crate::policy::decision::time_left(not_before_ms(props), now_ms)
}

/// A copy of `props` that says the job may not run before `at_ms`.
pub(crate) fn with_not_before(props: BasicProperties, at_ms: i64) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(NOT_BEFORE.into(), AMQPValue::LongLongInt(at_ms));
    props.with_headers(table)
}

/// A header string value.
pub(crate) fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Inserts a string header.
pub(crate) fn insert(table: &mut FieldTable, key: &str, value: &str) {
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
            transient_ms: 4_321,
        };
        let props = with_retry_state(&BasicProperties::default(), &st, "backoff");
        assert_eq!(retry_state(&props), st);
        assert_eq!(get_str(&props, REASON).as_deref(), Some("backoff"));
    }

    #[test]
    fn an_early_return_knows_how_long_is_left() {
        let props = with_not_before(BasicProperties::default(), 10_000);
        assert_eq!(
            wait_left(&props, 4_000),
            Some(std::time::Duration::from_secs(6))
        );
        assert_eq!(wait_left(&props, 9_900), None, "close enough");
        assert_eq!(wait_left(&BasicProperties::default(), 0), None);
    }

    #[test]
    fn deliveries_are_the_brokers_count_or_our_own() {
        let fresh = BasicProperties::default();
        assert_eq!(deliveries_before(&fresh, false), 0);
        assert_eq!(deliveries_before(&fresh, true), 1, "a classic redelivery");
        let ours = with_deliveries(&fresh, 2);
        assert_eq!(deliveries_before(&ours, false), 2);
        assert_eq!(deliveries_before(&ours, true), 3);
        let mut table = FieldTable::default();
        table.insert(BROKER_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(4));
        let quorum = fresh.with_headers(table);
        assert_eq!(
            deliveries_before(&quorum, true),
            4,
            "the quorum queue's own count"
        );
    }

    #[test]
    fn a_first_delivery_has_a_fresh_state() {
        let st = retry_state(&BasicProperties::default());
        assert_eq!(st.attempts, 0);
        assert!(st.maybe_sent_ms.is_none());
    }
}
