//! The queues and exchanges wxdispatch declares at start-up (all durable).
//!
//! - the jobs queue (quorum by default, with a delivery limit that dead-letters poison jobs);
//! - the outcome topic exchange, and a durable queue bound to it with `#` so that no outcome is
//!   lost before a consumer exists;
//! - the dead-letter queue;
//! - delay queues, one per delay tier: a deferred job is published there and dead-letters back
//!   into the jobs queue when the tier's TTL expires. One tier per queue means messages expire
//!   in order, with no head-of-line blocking.
//!
//! A quota-paused backlog can hold a day's campaign in the delay tiers, so the hop back must
//! not lose it. RabbitMQ promises at-least-once dead-lettering only from quorum queues with
//! `x-dead-letter-strategy: at-least-once` and `x-overflow: reject-publish` (3.10+); classic
//! queues dead-letter at most once (a message expiring while its target is unavailable, as
//! right after a broker restart, is dropped). So when the jobs queue is a quorum queue the
//! tiers are quorum queues with those arguments and a queue TTL per tier. Their names carry
//! [`DELAY_VERSION`], because a queue's arguments cannot change once it exists: the tiers of
//! an older version drain into the jobs queue on their own (docs/OPERATIONS.md).
//!
//! Who owns the topology is [`Topology`]: `declare` (the default) declares everything at every
//! (re)connect; `passive` only checks that it exists. A declare that the broker refuses
//! because a queue exists with other arguments is [`TopologyError::Mismatch`], which stops the
//! worker with one line that names the queue, the argument and the fix; retrying could never
//! succeed.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{Config, QueueType, Topology};

/// The version in the names of the quorum delay tiers. Bump it whenever their arguments
/// change, and say in docs/OPERATIONS.md how to drain the old ones.
pub const DELAY_VERSION: u32 = 2;

/// Why the topology could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A queue exists with other arguments than the worker declares. Permanent: the worker
    /// stops instead of reconnecting forever.
    #[error("{}", mismatch_line(.queue, .argument.as_deref(), .detail))]
    Mismatch {
        queue: String,
        /// The argument the broker named (`x-delivery-limit`), when it did.
        argument: Option<String>,
        /// The broker's own words.
        detail: String,
    },
    /// `topology = "passive"` and these queues (or the exchange) do not exist. Permanent.
    #[error(
        "topology = passive (WXD_TOPOLOGY): {} missing: {}; declare them as docs/OPERATIONS.md shows, or run with WXD_TOPOLOGY=declare",
        if .0.len() == 1 { "this queue or exchange is" } else { "these queues or exchanges are" },
        .0.join(", ")
    )]
    Missing(Vec<String>),
    /// The broker or the connection failed; a reconnect may fix it.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
}

impl TopologyError {
    /// Whether reconnecting cannot help (the worker should stop and say why).
    pub(crate) fn is_permanent(&self) -> bool {
        !matches!(self, TopologyError::Amqp(_))
    }
}

/// The policy key that sets a declare-time argument on an existing queue, if there is one.
fn policy_key(argument: &str) -> Option<&'static str> {
    Some(match argument {
        "x-delivery-limit" => "delivery-limit",
        "x-max-length" => "max-length",
        "x-max-length-bytes" => "max-length-bytes",
        "x-overflow" => "overflow",
        "x-message-ttl" => "message-ttl",
        "x-dead-letter-exchange" => "dead-letter-exchange",
        "x-dead-letter-routing-key" => "dead-letter-routing-key",
        "x-dead-letter-strategy" => "dead-letter-strategy",
        _ => return None,
    })
}

fn mismatch_line(queue: &str, argument: Option<&str>, detail: &str) -> String {
    let arg = argument.unwrap_or("an argument");
    let fix = match argument.and_then(policy_key) {
        Some(key) => format!(
            "queue arguments cannot change once a queue exists: put the setting back as it was \
             and change it with a RabbitMQ policy ({key}), or let a policy own it and run with \
             WXD_TOPOLOGY=passive (docs/OPERATIONS.md)"
        ),
        None => "this argument cannot be changed by a policy: put the setting back, or drain \
                 and delete the queue so it is declared anew (docs/OPERATIONS.md)"
            .to_string(),
    };
    format!("queue {queue}: {arg} differs from the existing queue's ({detail}); {fix}")
}

/// Turns a refused declare of `queue` into a [`TopologyError`].
fn refused(queue: &str, e: lapin::Error) -> TopologyError {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == 406
    {
        let detail = amqp.get_message().to_string();
        let argument = detail
            .split_once("inequivalent arg '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(arg, _)| arg.to_string());
        return TopologyError::Mismatch {
            queue: queue.to_string(),
            argument,
            detail,
        };
    }
    TopologyError::Amqp(e)
}

/// Delay tiers in seconds. A deferral uses the longest tier not above the wanted delay; a job
/// that comes back early is simply deferred again.
pub const DELAY_TIERS: &[u64] = &[1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/// The tier for a wanted delay.
pub(crate) fn tier_for(delay: Duration) -> u64 {
    let secs = delay.as_secs_f64().ceil() as u64;
    DELAY_TIERS
        .iter()
        .copied()
        .rev()
        .find(|t| *t <= secs)
        .unwrap_or(DELAY_TIERS[0])
}

/// The name of a tier's delay queue: versioned for quorum tiers, the original name for the
/// classic ones.
pub fn delay_queue(config: &Config, tier: u64) -> String {
    match config.amqp.jobs_queue_type {
        QueueType::Quorum => format!("{}.delay.v{DELAY_VERSION}.{tier}s", config.amqp.jobs_queue),
        QueueType::Classic => classic_delay_queue(config, tier),
    }
}

/// The name the classic tiers have always had (and the quorum setup used before version 2).
fn classic_delay_queue(config: &Config, tier: u64) -> String {
    format!("{}.delay.{tier}s", config.amqp.jobs_queue)
}

/// The arguments the jobs queue and the delay queues share: the jobs queue's type, and
/// dead-lettering to the queue `target` through the default exchange.
fn dead_lettering_to(config: &Config, target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        queue_type(config.amqp.jobs_queue_type),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(target.into()),
    );
    args
}

/// The arguments of a tier's delay queue.
fn delay_args(config: &Config, tier: u64) -> FieldTable {
    let mut args = dead_lettering_to(config, &config.amqp.jobs_queue);
    if config.amqp.jobs_queue_type == QueueType::Quorum {
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        // Required for at-least-once: without it RabbitMQ falls back to at-most-once.
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt((tier * 1000) as i64),
        );
    }
    args
}

/// Every queue the worker uses, in declaration order.
pub fn queues(config: &Config) -> Vec<String> {
    let mut names = vec![
        config.amqp.jobs_queue.clone(),
        config.amqp.dead_queue.clone(),
        config.amqp.outcomes_queue.clone(),
    ];
    names.extend(DELAY_TIERS.iter().map(|t| delay_queue(config, *t)));
    names
}

/// Sets the topology up the way `config.amqp.topology` says: declares it, or checks it exists.
pub(crate) async fn ensure(
    conn: &Connection,
    ch: &Channel,
    config: &Config,
) -> Result<(), TopologyError> {
    match config.amqp.topology {
        Topology::Declare => declare(ch, config).await,
        Topology::Passive => check(conn, config).await,
    }
}

/// Checks, with passive declares only (no `configure` permission needed), that every queue and
/// the exchange exist, and names every one that does not. A passive declare of a missing
/// queue closes its channel, so each check gets its own.
pub(crate) async fn check(conn: &Connection, config: &Config) -> Result<(), TopologyError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut missing = Vec::new();
    let mut names: Vec<(String, bool)> = queues(config).into_iter().map(|q| (q, true)).collect();
    names.push((config.amqp.outcomes_exchange.clone(), false));
    for (name, is_queue) in names {
        let ch = conn.create_channel().await?;
        let found = if is_queue {
            ch.queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map(|_| ())
        } else {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        };
        match found {
            Ok(()) => {
                let _ = ch.close(200, "checked".into()).await;
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => {
                    missing.push(if is_queue {
                        format!("queue {name}")
                    } else {
                        format!("exchange {name}")
                    });
                }
                _ => return Err(e.into()),
            },
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TopologyError::Missing(missing))
    }
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
pub async fn declare(ch: &Channel, config: &Config) -> Result<(), TopologyError> {
    let mut jobs_args = dead_lettering_to(config, &config.amqp.dead_queue);
    if config.amqp.jobs_queue_type == QueueType::Quorum {
        jobs_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(config.amqp.delivery_limit as i32),
        );
    }
    ch.queue_declare(config.amqp.jobs_queue.as_str().into(), durable(), jobs_args)
        .await
        .map_err(|e| refused(&config.amqp.jobs_queue, e))?;

    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        queue_type(config.amqp.jobs_queue_type),
    );
    ch.queue_declare(config.amqp.dead_queue.as_str().into(), durable(), dead_args)
        .await
        .map_err(|e| refused(&config.amqp.dead_queue, e))?;

    ch.exchange_declare(
        config.amqp.outcomes_exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    let mut out_args = FieldTable::default();
    out_args.insert(
        "x-queue-type".into(),
        queue_type(config.amqp.jobs_queue_type),
    );
    ch.queue_declare(
        config.amqp.outcomes_queue.as_str().into(),
        durable(),
        out_args,
    )
    .await
    .map_err(|e| refused(&config.amqp.outcomes_queue, e))?;
    ch.queue_bind(
        config.amqp.outcomes_queue.as_str().into(),
        config.amqp.outcomes_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    for tier in DELAY_TIERS {
        let name = delay_queue(config, *tier);
        ch.queue_declare(name.as_str().into(), durable(), delay_args(config, *tier))
            .await
            .map_err(|e| refused(&name, e))?;
    }
    Ok(())
}

/// Messages ready in `queue` now (a passive declare; messages delivered and not yet acked are
/// not counted). A passive declare of a missing queue closes the channel, so give it one that
/// may be lost.
pub async fn depth(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
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
}

/// Deletes every queue and the exchange `declare` creates. For tools that use throw-away
/// names (the demo, the benchmark, tests); never called by the worker.
pub async fn delete(ch: &Channel, config: &Config) {
    let mut names = vec![
        config.amqp.jobs_queue.clone(),
        config.amqp.outcomes_queue.clone(),
        config.amqp.dead_queue.clone(),
    ];
    names.extend(DELAY_TIERS.iter().map(|t| delay_queue(config, *t)));
    names.extend(DELAY_TIERS.iter().map(|t| classic_delay_queue(config, *t)));
    names.dedup();
    for q in names {
        let _ = ch
            .queue_delete(
                q.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = ch
        .exchange_delete(
            config.amqp.outcomes_exchange.as_str().into(),
            Default::default(),
        )
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

    #[test]
    fn a_mismatch_names_the_queue_the_argument_and_the_policy_that_fixes_it() {
        let detail = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue \
                      'wxdispatch.jobs' in vhost '/': received the value '7' of type \
                      'signedint' but current is the value '5' of type 'signedint'";
        let e = TopologyError::Mismatch {
            queue: "wxdispatch.jobs".into(),
            argument: Some("x-delivery-limit".into()),
            detail: detail.into(),
        };
        let line = e.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        for part in [
            "queue wxdispatch.jobs",
            "x-delivery-limit",
            "policy (delivery-limit)",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        assert!(e.is_permanent());
        let e = TopologyError::Mismatch {
            queue: "q".into(),
            argument: Some("x-queue-type".into()),
            detail: "x".into(),
        };
        assert!(
            e.to_string().contains("cannot be changed by a policy"),
            "{e}"
        );
    }

    #[test]
    fn quorum_tiers_are_versioned_with_at_least_once_dead_lettering() {
        let env: std::collections::BTreeMap<String, String> = Default::default();
        let mut c = Config::from_sources(None, &env).unwrap();
        assert_eq!(delay_queue(&c, 5), "wxdispatch.jobs.delay.v2.5s");
        let args = delay_args(&c, 5);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(5000)));
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        c.amqp.jobs_queue_type = QueueType::Classic;
        assert_eq!(
            delay_queue(&c, 5),
            "wxdispatch.jobs.delay.5s",
            "classic names unchanged"
        );
        assert!(
            delay_args(&c, 5)
                .inner()
                .get("x-dead-letter-strategy")
                .is_none()
        );
    }
}
