//! A publisher that only reports success once the broker has confirmed the message.
//!
//! Confirms are pipelined: each call publishes and awaits its own confirm, so many tasks can
//! have messages in flight on one channel at once.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::amqp::headers;
use crate::amqp::topology;
use crate::config::Config;
use crate::outcome::Outcome;

/// Why a publish did not get a positive confirm. Either way the job must not be acked.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker nacked the message")]
    Nacked,
    #[error("message was returned as unroutable")]
    Returned,
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// The channel closed while the confirm was awaited (a closed channel usually fails the
    /// confirm itself; this covers one that does not).
    #[error("no confirm after {0:?}, and the channel is closed")]
    Timeout(Duration),
    /// The answer says the channel is not in confirm mode: the broker closed it while the
    /// publish was under way, and nothing says the message was stored.
    #[error("the publish was not confirmed (the channel lost confirm mode)")]
    NotConfirmed,
}

/// Publishes outcomes, dead letters, deferred and expanded jobs with confirms.
pub struct Publisher {
    channel: Channel,
    exchange: String,
    jobs_queue: String,
    dead_queue: String,
    config: Config,
    /// The worker's own user: the `user_id` of every job it publishes again (a batch's
    /// recipients, a deferral, a dead letter). The broker refuses a message whose `user_id` is
    /// not the connection's user, so the original publisher's cannot be kept.
    own_user: ShortString,
}

/// How long a confirm is awaited before the channel is checked and the wait is logged.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(30);

/// The AMQP properties of an outcome's message: persistent JSON, the job id as
/// `correlation_id`, and the [`Outcome::message_id`] consumers deduplicate by.
pub fn outcome_properties(outcome: &Outcome) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(outcome.finished_at.timestamp() as u64)
        .with_message_id(outcome.message_id().into());
    match &outcome.id {
        Some(id) => props.with_correlation_id(id.as_str().into()),
        None => props,
    }
}

impl Publisher {
    /// Opens a confirm-mode channel on `conn`.
    pub async fn new(conn: &Connection, config: &Config) -> lapin::Result<Publisher> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            exchange: config.amqp.outcomes_exchange.clone(),
            jobs_queue: config.amqp.jobs_queue.clone(),
            dead_queue: config.amqp.dead_queue.clone(),
            config: config.clone(),
            own_user: super::connection_user(&config.amqp.url).into(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The user this publisher's connection authenticates as.
    pub(crate) fn own_user(&self) -> &str {
        self.own_user.as_str()
    }

    /// Publishes and waits for the broker's ack.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_to(exchange.into(), routing_key.into(), body, props)
            .await
    }

    /// [`Publisher::publish`] with the names already owned, as lapin takes them.
    async fn publish_to(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await?;
        // A confirm can take long without anything being wrong with this job: a broker under a
        // resource alarm reads nothing from us, a quorum queue without quorum commits nothing.
        // Giving up would hand the job back (and it would be sent again) while this very
        // message may still be confirmed, so wait as long as the channel is open, and say so.
        let mut confirm = std::pin::pin!(confirm);
        let mut waited = Duration::ZERO;
        let confirmation = loop {
            match tokio::time::timeout(CONFIRM_PATIENCE, &mut confirm).await {
                Ok(confirmation) => break confirmation?,
                Err(_) => {
                    waited += CONFIRM_PATIENCE;
                    if !self.channel.status().connected() {
                        return Err(PublishError::Timeout(waited));
                    }
                    tracing::warn!(
                        waited_secs = waited.as_secs(),
                        "no publisher confirm yet (a resource alarm, or a quorum queue without \
                         quorum?); still waiting, the job stays unacked"
                    );
                }
            }
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Returned),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // Every channel here is in confirm mode; an unconfirmed publish is not a stored one.
            Confirmation::NotRequested => Err(PublishError::NotConfirmed),
        }
    }

    /// Publishes an outcome to the outcome exchange with routing key `<kind>.<status>`.
    pub(crate) async fn outcome(&self, outcome: &Outcome) -> Result<(), PublishError> {
        self.publish_to(
            self.exchange.as_str().into(),
            outcome.routing_key().into(),
            &outcome.to_json(),
            outcome_properties(outcome),
        )
        .await
    }

    /// Copies a job that can never be sent to the dead-letter queue, with the reason in
    /// headers. The original properties are kept, so the job can be fixed and replayed.
    pub(crate) async fn dead_letter(
        &self,
        body: &[u8],
        props: &BasicProperties,
        reason: &str,
        detail: &str,
    ) -> Result<(), PublishError> {
        let mut table = props.headers().clone().unwrap_or_default();
        headers::insert(&mut table, headers::REASON, reason);
        headers::insert(&mut table, headers::ERROR, detail);
        headers::insert(&mut table, headers::SOURCE_QUEUE, &self.jobs_queue);
        let props = props
            .clone()
            .with_headers(table)
            .with_delivery_mode(2)
            .with_user_id(self.own_user.clone());
        self.publish("", &self.dead_queue, body, props).await
    }

    /// Parks a job in the delay queue tier for `delay`; it dead-letters back to the jobs queue.
    pub async fn defer(
        &self,
        body: &[u8],
        props: BasicProperties,
        delay: Duration,
    ) -> Result<(), PublishError> {
        let tier = topology::tier_for(delay);
        let not_before = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
        let props = headers::with_not_before(props, not_before)
            .with_expiration((tier * 1000).to_string().into())
            .with_delivery_mode(2)
            .with_user_id(self.own_user.clone());
        self.publish("", &topology::delay_queue(&self.config, tier), body, props)
            .await
    }

    /// Puts a job back at the end of the jobs queue as it was, with its own `props` (which
    /// carry the worker's delivery count on a classic queue).
    pub(crate) async fn requeue(
        &self,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish("", &self.jobs_queue, body, props.with_delivery_mode(2))
            .await
    }

    /// Publishes a job to the jobs queue (used to expand batches).
    pub async fn job(&self, body: Vec<u8>, batch_id: &str) -> Result<(), PublishError> {
        let mut table = FieldTable::default();
        headers::insert(&mut table, headers::BATCH, batch_id);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(table)
            .with_user_id(self.own_user.clone());
        self.publish("", &self.jobs_queue, &body, props).await
    }
}
