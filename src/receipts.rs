//! The WeChat server callback: URL verification and TEMPLATESENDJOBFINISH delivery receipts.
//!
//! A receipt is published to the outcome exchange (kind `receipt`) with publisher confirms
//! *before* the endpoint answers `success`. If the broker is unavailable the endpoint answers
//! 503, so WeChat retries: no receipt is acknowledged unless it was stored. WeChat retries a
//! push up to three times, so receipts are deduplicated by `(MsgID, status)` for a while.
//!
//! Bad input never publishes: a wrong signature or a stale timestamp is 401; malformed XML, a
//! DOCTYPE, bad base64 or padding, a wrong appid or an oversized body is 400. Each is counted
//! in `wxdispatch_callback_requests_total{result}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::amqp::{self, Publisher};
use crate::callback::{self, AesKey, Inbound, ReceiptStatus};
use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::outcome::{Kind, Outcome, SendStatus};

/// Largest callback body accepted. WeChat's pushes are well under 2 KiB.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a receipt's `(MsgID, status)` is remembered to drop WeChat's retries.
const DEDUP_FOR: Duration = Duration::from_secs(600);

/// Callback state.
pub struct Receipts {
    token: Secret,
    aes_key: Option<AesKey>,
    appids: Vec<String>,
    max_age: Duration,
    metrics: Arc<Metrics>,
    config: Config,
    publisher: tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>,
    seen: Mutex<HashMap<(i64, String), Instant>>,
}

impl Receipts {
    /// The callback, if a callback token is configured.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Arc<Receipts>>> {
        let Some(token) = config.callback_token.clone() else {
            return Ok(None);
        };
        let aes_key = match &config.callback_aes_key {
            Some(k) => Some(
                AesKey::from_encoding_aes_key(k.expose())
                    .map_err(|e| anyhow::anyhow!("WXD_CALLBACK_AES_KEY: {e}"))?,
            ),
            None => None,
        };
        // The series exists from the start, so dashboards and alerts see a zero, not nothing.
        metrics.callback_requests_total.with_label_values(&["ok"]);
        Ok(Some(Arc::new(Receipts {
            token,
            aes_key,
            appids: config.accounts.iter().map(|a| a.appid.clone()).collect(),
            max_age: Duration::from_secs(config.callback_max_age_secs),
            metrics,
            config: config.clone(),
            publisher: tokio::sync::Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
        })))
    }

    /// The callback routes at the configured path.
    pub fn router(self: Arc<Self>) -> Router {
        let path = self.config.callback_path.clone();
        Router::new()
            .route(&path, get(verify_url).post(receive))
            .with_state(self)
    }

    fn count(&self, result: &str) {
        self.metrics
            .callback_requests_total
            .with_label_values(&[result])
            .inc();
    }

    fn fresh(&self, timestamp: &str) -> bool {
        let Ok(ts) = timestamp.parse::<i64>() else {
            return false;
        };
        let now = chrono::Utc::now().timestamp();
        (now - ts).unsigned_abs() <= self.max_age.as_secs()
    }

    /// Publishes with confirms over a lazily (re)opened connection.
    async fn publish(&self, outcome: &Outcome) -> anyhow::Result<()> {
        // The lock only guards (re)connecting; confirms are awaited outside it, so receipts
        // are published concurrently.
        let publisher = {
            let mut slot = self.publisher.lock().await;
            if slot.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                let conn = amqp::connect(&self.config.amqp_url, "wxdispatch-receipts").await?;
                let publisher = Arc::new(Publisher::new(&conn, &self.config).await?);
                *slot = Some((conn, publisher));
            }
            slot.as_ref().expect("just set").1.clone()
        };
        publisher.outcome(outcome).await?;
        Ok(())
    }

    /// Whether this receipt was already stored recently; marks it seen if not.
    fn first_time(&self, msgid: i64, status: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.len() > 100_000 {
            seen.retain(|_, t| now.duration_since(*t) < DEDUP_FOR);
        }
        match seen.get(&(msgid, status.to_string())) {
            Some(t) if now.duration_since(*t) < DEDUP_FOR => false,
            _ => {
                seen.insert((msgid, status.to_string()), now);
                true
            }
        }
    }

    fn forget(&self, msgid: i64, status: &str) {
        self.seen
            .lock()
            .expect("seen lock")
            .remove(&(msgid, status.to_string()));
    }
}

#[derive(Deserialize, Default)]
struct CallbackQuery {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    nonce: String,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

async fn verify_url(State(r): State<Arc<Receipts>>, Query(q): Query<CallbackQuery>) -> Response {
    let ok = callback::signature::verify_url_signature(
        &q.signature,
        r.token.expose(),
        &q.timestamp,
        &q.nonce,
    );
    match (ok, q.echostr) {
        (true, Some(echo)) => {
            r.count("verify_ok");
            echo.into_response()
        }
        (true, None) => {
            r.count("bad_request");
            reply(StatusCode::BAD_REQUEST, "missing echostr")
        }
        (false, _) => {
            r.count("bad_signature");
            reply(StatusCode::UNAUTHORIZED, "bad signature")
        }
    }
}

async fn receive(
    State(r): State<Arc<Receipts>>,
    Query(q): Query<CallbackQuery>,
    body: Body,
) -> Response {
    // Read at most one byte past the limit ourselves rather than with axum's body limit, which
    // would answer 413 before this handler could count the refusal.
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY + 1).await else {
        r.count("too_large");
        return reply(StatusCode::BAD_REQUEST, "body too large");
    };
    if !r.fresh(&q.timestamp) {
        r.count("stale");
        return reply(StatusCode::UNAUTHORIZED, "stale or missing timestamp");
    }
    let safe = q.encrypt_type.as_deref() == Some("aes");
    let opened = if safe {
        let Some(key) = &r.aes_key else {
            r.count("no_aes_key");
            return reply(StatusCode::BAD_REQUEST, "safe mode is not configured");
        };
        let query = callback::SafeModeQuery {
            timestamp: &q.timestamp,
            nonce: &q.nonce,
            msg_signature: q.msg_signature.as_deref().unwrap_or(""),
        };
        callback::open_safe_mode(r.token.expose(), key, &r.appids, &query, &body, MAX_BODY)
            .map(|o| (Some(o.appid), o.inbound))
    } else {
        callback::open_plain(
            r.token.expose(),
            &q.signature,
            &q.timestamp,
            &q.nonce,
            &body,
            MAX_BODY,
        )
        .map(|i| (None, i))
    };
    let (appid, inbound) = match opened {
        Ok(x) => x,
        Err(e) => {
            let reason = e.reason();
            r.count(reason);
            tracing::warn!(reason, "callback refused");
            return if matches!(e, callback::CallbackError::BadSignature) {
                reply(StatusCode::UNAUTHORIZED, "bad signature")
            } else {
                reply(StatusCode::BAD_REQUEST, "bad request")
            };
        }
    };
    let event = match inbound {
        Inbound::Event(e) if e.is_template_send_job_finish() => e,
        Inbound::Event(_) | Inbound::Message { .. } => {
            r.count("ignored");
            return "success".into_response();
        }
        Inbound::Encrypted { .. } => {
            r.count("not_decrypted");
            return reply(
                StatusCode::BAD_REQUEST,
                "encrypted body without encrypt_type=aes",
            );
        }
    };
    let (Some(msgid), Some(raw_status)) = (event.msg_id, event.status.clone()) else {
        r.count("missing_field");
        return reply(StatusCode::BAD_REQUEST, "receipt without MsgID or Status");
    };
    let status = ReceiptStatus::from_wechat(&raw_status);
    if !r.first_time(msgid, status.as_str()) {
        r.count("duplicate");
        return "success".into_response();
    }
    let appid = appid.or_else(|| (r.appids.len() == 1).then(|| r.appids[0].clone()));
    let mut o = Outcome::send(SendStatus::Sent, None, appid, Some(event.from_user.clone()));
    o.kind = Kind::Receipt;
    o.status = status.as_str().to_string();
    o.msgid = Some(msgid);
    o.errmsg = Some(raw_status);
    match r.publish(&o).await {
        Ok(()) => {
            r.count("ok");
            let label = match status {
                ReceiptStatus::Other(_) => "other",
                _ => status.as_str(),
            };
            r.metrics.receipts_total.with_label_values(&[label]).inc();
            tracing::debug!(msgid, status = %o.status, "receipt stored");
            "success".into_response()
        }
        Err(e) => {
            r.forget(msgid, status.as_str());
            r.count("unavailable");
            tracing::warn!(error = %e, msgid, "could not store a receipt; answering 503 so WeChat retries");
            reply(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}
