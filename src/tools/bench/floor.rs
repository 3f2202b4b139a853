//! The libraries' floor: a worker stripped down to the AMQP and HTTP calls every job needs.
//!
//! `wxdispatch bench --floor amqp` (or `amqp-http`) starts this in place of `wxdispatch run`,
//! under the same harness, so its CPU per job is the least any worker built on lapin (and
//! reqwest) can spend on this machine. The difference to the real worker is what wxdispatch's
//! own logic costs: job parsing and validation, pacing, the token cache, the retry policy,
//! metrics and logs. (The outcome goes through the worker's own `Outcome` and
//! [`Publisher::outcome`], since every job needs one.)
//!
//! Per delivery it does only what the real worker cannot skip: with `amqp-http`, one
//! `POST /cgi-bin/message/template/send` with the job's bytes as the body (through
//! [`WechatClient`], one keep-alive pool); then one outcome published with a confirm and
//! awaited; then the ack, batched by [`Acks`] as in the worker. The job id (the outcome's
//! `correlation_id`, which the bench's collector matches) is found with a byte search, not a
//! JSON parse. Nothing here is used outside the benchmark.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::amqp::{self, Acks, Publisher};
use crate::config::{Config, Secret, TokenMode};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, SendStatus};
use crate::wechat::client::WechatClient;

/// What the floor worker does per job besides consuming, publishing and acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Floor {
    /// AMQP only: consume, publish the outcome with a confirm, ack. No HTTP.
    Amqp,
    /// AMQP plus one HTTP send per job to the simulator.
    AmqpHttp,
}

impl Floor {
    pub fn as_str(self) -> &'static str {
        match self {
            Floor::Amqp => "amqp",
            Floor::AmqpHttp => "amqp-http",
        }
    }
}

/// `wxdispatch bench-floor`'s options (a hidden command: the bench starts it).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub floor: Floor,
}

/// What every job task of the floor worker shares.
struct Shared {
    publisher: Publisher,
    acks: Acks,
    client: WechatClient,
    /// Fetched once at start (`amqp-http` only); the floor has no token cache.
    token: Option<Secret>,
}

/// Runs the floor worker until SIGTERM, configured like `wxdispatch run` (`WXD_*`).
pub async fn run(Args { floor }: Args) -> anyhow::Result<()> {
    let config = Config::load(None)?;
    crate::logging::init_with_default(crate::config::LogFormat::Text, "warn");
    let account = config
        .accounts
        .first()
        .context("the floor worker needs WXD_APPID and WXD_SECRET")?;
    let client = WechatClient::new(&config.wechat.api_base, config.wechat.http_timeout);
    let secret = config
        .credentials
        .app_secret(&account.appid)
        .context("the floor worker needs WXD_SECRET")?;
    let token = match floor {
        Floor::Amqp => None,
        Floor::AmqpHttp => {
            let reply = client
                .fetch_token(TokenMode::Stable, &account.appid, secret, false)
                .await
                .map_err(|e| anyhow::anyhow!("token: {e}"))?;
            Some(Secret::new(
                reply.access_token.context("the token reply has no token")?,
            ))
        }
    };

    let pub_conn = amqp::connect(&config.amqp.url, "wxdispatch-floor-publish").await?;
    let con_conn = amqp::connect(&config.amqp.url, "wxdispatch-floor-consume").await?;
    let publisher = Publisher::new(&pub_conn, &config).await?;
    let ch = con_conn.create_channel().await?;
    ch.basic_qos(config.amqp.prefetch, BasicQosOptions::default())
        .await?;
    let acks = Acks::start(ch.clone(), Arc::new(Metrics::new()));
    let mut consumer = ch
        .basic_consume(
            config.amqp.jobs_queue.as_str().into(),
            "wxdispatch-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let shared = Arc::new(Shared {
        publisher,
        acks,
        client,
        token,
    });
    let slots = Arc::new(Semaphore::new(config.limits.concurrency));
    let mut tasks = JoinSet::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        while tasks.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = term.recv() => break,
            s = slots.clone().acquire_owned() => s.expect("never closed"),
        };
        let delivery = tokio::select! {
            _ = term.recv() => break,
            d = consumer.next() => match d {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        };
        // Registered here, in delivery order, before the job can finish (as the worker does):
        // a multiple ack must never cover a delivery that is still running.
        shared.acks.received(delivery.delivery_tag);
        let shared = shared.clone();
        tasks.spawn(Box::pin(async move {
            let Shared {
                publisher,
                acks,
                client,
                token,
            } = &*shared;
            let id = job_id(&delivery.data).unwrap_or("?").to_owned();
            // The outcome says whether the send worked, so a floor run cannot pass on
            // failed sends.
            let (status, msgid) = match token {
                Some(token) => {
                    let body = bytes::Bytes::from(delivery.data);
                    match client.send_template(token, body).await {
                        Ok(reply) if reply.errcode == 0 => (SendStatus::Sent, reply.msgid),
                        Ok(reply) => {
                            tracing::warn!(errcode = reply.errcode, "send refused");
                            (SendStatus::Failed, None)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "send failed");
                            (SendStatus::Failed, None)
                        }
                    }
                }
                None => (SendStatus::Sent, None),
            };
            drop(slot);
            // The worker's own outcome type and publish (routing key, properties, confirm).
            let mut outcome = Outcome::send(status, Some(id), None, None);
            outcome.msgid = msgid;
            outcome.attempts = 1;
            match publisher.outcome(&outcome).await {
                Ok(()) => acks.ack(delivery.delivery_tag),
                // Never acked without a confirmed outcome: the broker redelivers it, and the
                // bench reports the missing outcome.
                Err(e) => tracing::warn!(error = %e, "outcome not confirmed"),
            }
        }));
    }
    while tasks.join_next().await.is_some() {}
    shared.acks.close().await;
    let _ = con_conn.close(200, "bye".into()).await;
    let _ = pub_conn.close(200, "bye".into()).await;
    Ok(())
}

/// The value of the first `"id":"…"` in a job body, found without parsing the JSON. Good
/// enough for the bench's own job bodies, whose only `"id"` key is the job id.
fn job_id(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""id":""#;
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_found_in_the_bench_body() {
        let body = crate::tools::sample::job("abc-12", "obenchx");
        assert_eq!(job_id(&body), Some("abc-12"));
        assert_eq!(job_id(b"{}"), None);
    }
}
