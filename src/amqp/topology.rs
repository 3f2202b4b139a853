//! The queues and exchanges wxdispatch declares at start-up (all durable).
//!
//! - the jobs queue (quorum by default, with a delivery limit that dead-letters poison jobs);
//! - the outcome topic exchange, and a durable queue bound to it with `#` so that no outcome is
//!   lost before a consumer exists;
//! - the dead-letter queue;
//! - delay queues, one per delay tier: a deferred job is published there with a per-message
//!   TTL equal to the tier and dead-letters back into the jobs queue when it expires. One tier
//!   per queue means messages expire in order, with no head-of-line blocking.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::{Config, QueueType};

/// Delay tiers in seconds. A deferral uses the longest tier not above the wanted delay; a job
/// that comes back early is simply deferred again.
pub const DELAY_TIERS: &[u64] = &[1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/// The tier for a wanted delay.
pub fn tier_for(delay: Duration) -> u64 {
    let secs = delay.as_secs_f64().ceil() as u64;
    DELAY_TIERS
        .iter()
        .copied()
        .rev()
        .find(|t| *t <= secs)
        .unwrap_or(DELAY_TIERS[0])
}

/// The name of a tier's delay queue.
pub fn delay_queue(config: &Config, tier: u64) -> String {
    format!("{}.delay.{tier}s", config.jobs_queue)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn queue_type(t: QueueType) -> AMQPValue {
    AMQPValue::LongString(
        match t {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
        .into(),
    )
}

/// Declares everything. Idempotent, so every replica does it at every (re)connect.
pub async fn declare(ch: &Channel, config: &Config) -> lapin::Result<()> {
    let mut jobs_args = FieldTable::default();
    jobs_args.insert("x-queue-type".into(), queue_type(config.jobs_queue_type));
    jobs_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    jobs_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(config.dead_queue.as_str().into()),
    );
    if config.jobs_queue_type == QueueType::Quorum {
        jobs_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(config.delivery_limit as i32),
        );
    }
    ch.queue_declare(config.jobs_queue.as_str().into(), durable(), jobs_args)
        .await?;

    let mut dead_args = FieldTable::default();
    dead_args.insert("x-queue-type".into(), queue_type(config.jobs_queue_type));
    ch.queue_declare(config.dead_queue.as_str().into(), durable(), dead_args)
        .await?;

    ch.exchange_declare(
        config.outcomes_exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    let mut out_args = FieldTable::default();
    out_args.insert("x-queue-type".into(), queue_type(config.jobs_queue_type));
    ch.queue_declare(config.outcomes_queue.as_str().into(), durable(), out_args)
        .await?;
    ch.queue_bind(
        config.outcomes_queue.as_str().into(),
        config.outcomes_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    for tier in DELAY_TIERS {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), queue_type(QueueType::Classic));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(config.jobs_queue.as_str().into()),
        );
        ch.queue_declare(delay_queue(config, *tier).as_str().into(), durable(), args)
            .await?;
    }
    Ok(())
}

/// Messages ready in `queue` now (a passive declare; 0 if it cannot be read). A passive
/// declare of a missing queue closes the channel, so give it one that may be lost.
pub async fn depth(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|q| q.message_count())
    .unwrap_or(0)
}

/// Deletes every queue and the exchange `declare` creates. For tools that use throw-away
/// names (the demo, the benchmark, tests); never called by the worker.
pub async fn delete(ch: &Channel, config: &Config) {
    let mut names = vec![
        config.jobs_queue.clone(),
        config.outcomes_queue.clone(),
        config.dead_queue.clone(),
    ];
    names.extend(DELAY_TIERS.iter().map(|t| delay_queue(config, *t)));
    for q in names {
        let _ = ch
            .queue_delete(
                q.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = ch
        .exchange_delete(config.outcomes_exchange.as_str().into(), Default::default())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_never_exceed_the_wanted_delay_except_the_shortest() {
        assert_eq!(tier_for(Duration::from_millis(10)), 1);
        assert_eq!(tier_for(Duration::from_secs(4)), 2);
        assert_eq!(tier_for(Duration::from_secs(600)), 600);
        assert_eq!(tier_for(Duration::from_secs(601)), 600);
        assert_eq!(tier_for(Duration::from_secs(100_000)), 3600);
    }
}
