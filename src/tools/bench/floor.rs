//! The libraries' floor: a worker stripped down to the AMQP and HTTP calls every job needs.
//!
//! `wxdispatch bench --floor amqp` (or `amqp-http`, `amqp-hyper`) starts this in place of
//! `wxdispatch run`, under the same harness, so its CPU per job is the least any worker built on
//! lapin (and reqwest, or hyper) can spend on this machine. The difference to the real worker is what wxdispatch's
//! own logic costs: job parsing and validation, pacing, the token cache, the retry policy,
//! metrics and logs. (The outcome goes through the worker's own `Outcome` and
//! [`Publisher::outcome`], since every job needs one.)
//!
//! Per delivery it does only what the real worker cannot skip: with `amqp-http`, one
//! `POST /cgi-bin/message/template/send` with the job's bytes as the body (through
//! [`WechatClient`], one keep-alive pool); with `amqp-hyper`, the same request through hyper's
//! own client ([`HyperSender`]), which reqwest is built on, so the two floors measure what
//! reqwest adds per request; then one outcome published with a confirm and awaited; then the ack, batched by [`Acks`] as in the worker. The job id (the outcome's
//! `correlation_id`, which the bench's collector matches) is found with a byte search, not a
//! JSON parse. Nothing here is used outside the benchmark.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::account::token::TokenSource;
use crate::amqp::{self, Acks, Publisher};
use crate::config::{Config, Secret};
use crate::job::MsgType;
use crate::metrics::Metrics;
use crate::outcome::{JobIdentity, Outcome, SendStatus};
use crate::wechat::Ask;
use crate::wechat::client::{ApiReply, WechatClient, send_path};

/// What the floor worker does per job besides consuming, publishing and acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Floor {
    /// AMQP only: consume, publish the outcome with a confirm, ack. No HTTP.
    Amqp,
    /// AMQP plus one HTTP send per job to the simulator, through the worker's reqwest client.
    AmqpHttp,
    /// The same as `amqp-http`, with the send through hyper-util's client instead of reqwest.
    AmqpHyper,
}

impl Floor {
    pub fn as_str(self) -> &'static str {
        match self {
            Floor::Amqp => "amqp",
            Floor::AmqpHttp => "amqp-http",
            Floor::AmqpHyper => "amqp-hyper",
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
    sender: Sender,
}

/// How the floor worker sends a job, if at all. The token is fetched once at start: the floor
/// has no token cache.
enum Sender {
    None,
    Reqwest { client: WechatClient, token: Secret },
    Hyper(HyperSender),
}

impl Sender {
    /// Sends the job's bytes as a template message; `Some(msgid)` if WeChat accepted it.
    async fn send(&self, body: Bytes) -> Result<Option<i64>, String> {
        let reply = match self {
            Sender::None => return Ok(None),
            Sender::Reqwest { client, token } => client
                .send_template(token, body)
                .await
                .map_err(|e| e.to_string())?,
            Sender::Hyper(hyper) => hyper.send(body).await?,
        };
        match reply.errcode {
            0 => Ok(reply.msgid),
            code => Err(format!("errcode {code}")),
        }
    }
}

/// The template send through hyper-util's pooled HTTP/1.1 client, as a product built on hyper
/// would make it: the URI (with the token) built once, static headers, the same timeout and
/// the same reply parsing as [`WechatClient`].
struct HyperSender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    timeout: Duration,
}

impl HyperSender {
    fn new(base: &str, token: &Secret, timeout: Duration) -> anyhow::Result<HyperSender> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(3))));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(http);
        let uri = format!(
            "{}{}?access_token={}",
            base.trim_end_matches('/'),
            send_path(MsgType::Template),
            token.expose()
        )
        .parse()
        .context("api_base is not a URI")?;
        Ok(HyperSender {
            client,
            uri,
            timeout,
        })
    }

    async fn send(&self, body: Bytes) -> Result<ApiReply, String> {
        let req = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let reply = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != hyper::StatusCode::OK {
                return Err(format!("http status {}", resp.status()));
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.timeout, reply)
            .await
            .map_err(|_| "timeout".to_string())?
    }
}

const USER_AGENT_VALUE: &str = concat!("wxdispatch/", env!("CARGO_PKG_VERSION"));

/// Runs the floor worker until SIGTERM, configured like `wxdispatch run` (`WXD_*`).
pub(crate) async fn run_floor(Args { floor }: Args) -> anyhow::Result<()> {
    let config = Config::load(None)?;
    crate::logging::init_with_default(crate::config::LogFormat::Text, "warn");
    let account = config
        .accounts
        .first()
        .context("the floor worker needs WXD_APPID and WXD_SECRET")?;
    let timeout = config.wechat.http_timeout;
    let secret = config
        .credentials
        .app_secret(&account.appid)
        .context("the floor worker needs WXD_SECRET")?;
    let sender = match floor {
        Floor::Amqp => Sender::None,
        Floor::AmqpHttp | Floor::AmqpHyper => {
            let client = WechatClient::new(&config.wechat.api_base, timeout);
            let reply = TokenSource::Stable {
                secret: secret.clone(),
            }
            .fetch(&client, &account.appid, Ask::Current)
            .await
            .map_err(|e| anyhow::anyhow!("token: {e}"))?;
            let token = Secret::new(reply.access_token.context("the token reply has no token")?);
            match floor {
                Floor::AmqpHyper => {
                    Sender::Hyper(HyperSender::new(&config.wechat.api_base, &token, timeout)?)
                }
                _ => Sender::Reqwest { client, token },
            }
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
        sender,
    });
    let send_permits = Arc::new(Semaphore::new(config.limits.concurrency));
    let mut tasks = JoinSet::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = term.recv() => break,
            p = send_permits.clone().acquire_owned() => p.expect("never closed"),
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
                sender,
            } = &*shared;
            let id = job_id(&delivery.data).unwrap_or("?").to_owned();
            // The outcome says whether the send worked, so a floor run cannot pass on
            // failed sends.
            let (status, msgid) = match sender.send(Bytes::from(delivery.data)).await {
                Ok(msgid) => (SendStatus::Sent, msgid),
                Err(e) => {
                    tracing::warn!(error = %e, "send failed");
                    (SendStatus::Failed, None)
                }
            };
            drop(permit);
            // The worker's own outcome type and publish (routing key, properties, confirm).
            let job = JobIdentity {
                id: Some(id),
                ..JobIdentity::default()
            };
            let mut outcome = Outcome::for_job(status, job);
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
