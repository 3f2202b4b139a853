//! The WeChat server callback: URL verification, TEMPLATESENDJOBFINISH delivery receipts and
//! the subscription events (consents and subscription delivery results).
//!
//! A receipt is published to the outcome exchange (kind `receipt`) with publisher confirms,
//! and the endpoint answers `success` only once the broker confirmed it: `success` makes
//! WeChat stop retrying, so it is a promise that the receipt is stored.
//!
//! WeChat gives up on a push after 5 s and retries it (three tries in all). The publish runs
//! in its own task, so it outlives the request; the request waits for it at most
//! [`ANSWER_WITHIN`] and otherwise answers 503. A retry of a push whose publish is still in
//! flight waits for that same publish (it never starts a second one, and never gets
//! `success` early); a retry after a failed publish publishes again; a retry after a
//! confirmed one is answered `success` at once. Pushes are told apart by
//! `(ToUserName, FromUserName, CreateTime, MsgID, Status)`, remembered for [`DEDUP_FOR`].
//!
//! Subscription events list one or more templates: `subscribe_msg_popup_event` and
//! `subscribe_msg_change_event` become one `kind: consent` outcome per template,
//! `subscribe_msg_sent_event` one `kind: receipt` per template. Each is stored under its own key
//! (the above plus the event name and TemplateId), with the same rules, and the push is
//! answered `success` only when every one of them is stored ([`combine`]); a retry publishes
//! only those that are not.
//!
//! Bad input never publishes: a wrong signature or a stale timestamp is 401; malformed XML, a
//! DOCTYPE, bad base64 or padding, a wrong appid, a missing field or an oversized body is 400.
//! Each is counted in `wxdispatch_callback_requests_total{result}`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::amqp::{self, Publisher};
use crate::callback::event::TEMPLATE_SEND_JOB_FINISH;
use crate::callback::{self, AesKey, Inbound, SubscriptionEvent};
use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::outcome::{Consent, Outcome, Receipt, ReceiptStatus};

/// Largest callback body accepted. WeChat's pushes are well under 2 KiB.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a stored receipt is remembered to answer WeChat's retries without publishing
/// again. WeChat's three tries are over within a minute; ten leaves room for clock trouble.
pub const DEDUP_FOR: Duration = Duration::from_secs(600);
/// The longest a push waits for its receipt's confirm before it is answered 503. WeChat
/// gives up after 5 s; the rest is for the network and the answer itself.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(4);
/// Opening the receipt connection gets this long, so a broker that accepts TCP but never
/// finishes the handshake cannot hold the connection slot (and every receipt behind it).
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// One receipt publish (connect and confirm) gets this long in its own task. Longer than
/// [`ANSWER_WITHIN`] on purpose: a broker blocked for a few seconds still stores the receipt
/// once, and WeChat's next retry gets `success` instead of a second publish.
const PUBLISH_WITHIN: Duration = Duration::from_secs(30);

/// What tells one receipt push from another. WeChat repeats all five on a retry; MsgID alone
/// is not enough, because it is reported to be 0 for messages sent with a `client_msg_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReceiptKey {
    pub to_user: String,
    pub from_user: String,
    pub create_time: i64,
    pub msg_id: i64,
    /// WeChat's status text, verbatim.
    pub status: String,
    /// The `Event` value: a consent and a receipt of one second must not merge.
    pub event: String,
    /// The item's TemplateId for subscription events (one push lists several); empty for
    /// template receipts.
    pub template_id: String,
}

/// How a push is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This push's receipt was published and confirmed: `success`.
    Stored,
    /// A retry of a push whose receipt was confirmed earlier: `success`, nothing published.
    Duplicate,
    /// A retry that waited for the publish an earlier try started, and saw it confirmed:
    /// `success`, nothing published again.
    Joined,
    /// The publish failed: 503, WeChat retries and the retry publishes again.
    Failed,
    /// No confirm within [`ANSWER_WITHIN`]: 503. The publish goes on; a retry waits for it.
    Pending,
}

impl Answer {
    /// Whether WeChat may be told `success` (it will not push this receipt again).
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::Stored | Answer::Duplicate | Answer::Joined)
    }

    /// The `wxdispatch_callback_requests_total` label.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Stored => "ok",
            Answer::Duplicate => "duplicate",
            Answer::Joined => "joined",
            Answer::Failed => "unavailable",
            Answer::Pending => "pending",
        }
    }
}

/// The answer to a push that stores several outcomes (a subscription event with several
/// templates): `success` only if every one is stored, so WeChat keeps retrying while any is
/// missing. A failed publish outranks a pending one (the retry must publish again).
pub fn combine(answers: &[Answer]) -> Answer {
    let rank = |a: &Answer| match a {
        Answer::Failed => 0,
        Answer::Pending => 1,
        Answer::Stored => 2,
        Answer::Joined => 3,
        Answer::Duplicate => 4,
    };
    answers
        .iter()
        .min_by_key(|a| rank(a))
        .cloned()
        .unwrap_or(Answer::Failed)
}

enum Entry {
    /// A publish is running; the value turns `Some(confirmed)` when it ends.
    InFlight(tokio::sync::watch::Receiver<Option<bool>>),
    /// Confirmed at this instant.
    Stored(tokio::time::Instant),
}

/// The receipts seen recently and the publishes in flight, by [`ReceiptKey`].
pub struct Dedupe {
    entries: Mutex<HashMap<ReceiptKey, Entry>>,
    keep_for: Duration,
}

impl Dedupe {
    pub fn new(keep_for: Duration) -> Arc<Dedupe> {
        Arc::new(Dedupe {
            entries: Mutex::new(HashMap::new()),
            keep_for,
        })
    }

    /// Stores the receipt `key` with `publish` unless it is stored or being stored already,
    /// and answers within `answer_within`. `publish` runs in its own task, so a push that
    /// gives up (or a client that hangs up) never cancels a publish half way: its outcome is
    /// recorded for the retry either way.
    pub async fn store<F>(
        self: &Arc<Self>,
        key: ReceiptKey,
        answer_within: Duration,
        publish: F,
    ) -> Answer
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + answer_within;
        let (mut done, joined) = {
            // Tokio's clock, so tests can move it past `keep_for`.
            let now = tokio::time::Instant::now();
            let mut entries = self.entries.lock().expect("dedupe lock");
            if entries.len() > 100_000 {
                let keep = self.keep_for;
                entries.retain(|_, e| match e {
                    Entry::Stored(t) => now.duration_since(*t) < keep,
                    Entry::InFlight(_) => true,
                });
            }
            match entries.get(&key) {
                Some(Entry::Stored(t)) if now.duration_since(*t) < self.keep_for => {
                    return Answer::Duplicate;
                }
                Some(Entry::InFlight(rx)) => (rx.clone(), true),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    entries.insert(key.clone(), Entry::InFlight(rx.clone()));
                    let me = self.clone();
                    tokio::spawn(async move {
                        let confirmed = publish.await.is_ok();
                        {
                            let mut entries = me.entries.lock().expect("dedupe lock");
                            if confirmed {
                                entries.insert(key, Entry::Stored(tokio::time::Instant::now()));
                            } else {
                                entries.remove(&key);
                            }
                        }
                        let _ = tx.send(Some(confirmed));
                    });
                    (rx, false)
                }
            }
        };
        let ended = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(v)) if *v == Some(true) => {
                if joined {
                    Answer::Joined
                } else {
                    Answer::Stored
                }
            }
            Ok(_) => Answer::Failed,
            Err(_) => Answer::Pending,
        }
    }
}

/// The account a plaintext-mode receipt belongs to: the one that declares the push's
/// `ToUserName` as its original id, else the only account. With several accounts and no
/// match there is no honest answer, so none.
pub fn attribute(accounts: &[(String, Option<String>)], to_user: &str) -> Option<String> {
    accounts
        .iter()
        .find(|(_, gh)| gh.as_deref() == Some(to_user))
        .or_else(|| (accounts.len() == 1).then(|| &accounts[0]))
        .map(|(appid, _)| appid.clone())
}

/// Callback state.
pub struct Receipts {
    token: Secret,
    aes_key: Option<AesKey>,
    appids: Vec<String>,
    /// `(appid, original_id)` of every account, to attribute plaintext receipts.
    accounts: Vec<(String, Option<String>)>,
    max_age: Duration,
    metrics: Arc<Metrics>,
    config: Config,
    publisher: tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>,
    seen: Arc<Dedupe>,
}

impl Receipts {
    /// The callback, if a callback token is configured.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Arc<Receipts>>> {
        let Some(token) = config.credentials.callback_token.clone() else {
            return Ok(None);
        };
        let aes_key = match &config.credentials.callback_aes_key {
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
            accounts: config
                .accounts
                .iter()
                .map(|a| (a.appid.clone(), a.original_id.clone()))
                .collect(),
            max_age: config.callback.max_age,
            metrics,
            config: config.clone(),
            publisher: tokio::sync::Mutex::new(None),
            seen: Dedupe::new(DEDUP_FOR),
        })))
    }

    /// The callback routes at the configured path.
    pub fn router(self: Arc<Self>) -> Router {
        let path = self.config.callback.path.clone();
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

    /// Publishes with confirms over a lazily (re)opened connection, all within
    /// [`PUBLISH_WITHIN`].
    async fn publish(&self, outcome: &Outcome) -> anyhow::Result<()> {
        tokio::time::timeout(PUBLISH_WITHIN, async {
            // The lock only guards (re)connecting; confirms are awaited outside it, so
            // receipts are published concurrently.
            let publisher = {
                let mut slot = self.publisher.lock().await;
                if slot.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                    let conn = tokio::time::timeout(
                        CONNECT_WITHIN,
                        amqp::connect(&self.config.amqp.url, "wxdispatch-receipts"),
                    )
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no AMQP connection within {CONNECT_WITHIN:?}")
                    })??;
                    let publisher = Arc::new(Publisher::new(&conn, &self.config).await?);
                    *slot = Some((conn, publisher));
                }
                slot.as_ref().expect("just set").1.clone()
            };
            publisher.outcome(outcome).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no confirm within {PUBLISH_WITHIN:?}"))?
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
        Inbound::Subscription(ev) => return store_subscription(&r, appid, ev).await,
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
    let appid = appid.or_else(|| attribute(&r.accounts, &event.to_user));
    if appid.is_none() {
        tracing::warn!(to_user = %event.to_user, "receipt for an original id no account declares (set original_id in [[accounts]])");
    }
    let key = ReceiptKey {
        to_user: event.to_user.clone(),
        from_user: event.from_user.clone(),
        create_time: event.create_time,
        msg_id: msgid,
        status: raw_status.clone(),
        event: TEMPLATE_SEND_JOB_FINISH.into(),
        template_id: String::new(),
    };
    let counted = Counted::Receipt(status.label());
    let o = Outcome::receipt(Receipt {
        appid,
        touser: event.from_user.clone(),
        msgid: Some(msgid),
        status,
        errcode: None,
        errmsg: Some(raw_status),
        template_id: None,
    });
    let publish = publish_counted(&r, o, counted);
    let answer = r.seen.store(key, ANSWER_WITHIN, publish).await;
    respond(&r, answer)
}

/// The counter an outcome bumps once the broker confirmed it.
enum Counted {
    /// `wxdispatch_receipts_total{status}`.
    Receipt(&'static str),
    /// `wxdispatch_consents_total{status,source}`.
    Consent(&'static str, &'static str),
}

/// The publish of one outcome, to run in the dedupe's own task. It is counted when the broker
/// confirmed it, even if the push that started it had already been answered 503.
fn publish_counted(
    r: &Arc<Receipts>,
    o: Outcome,
    counted: Counted,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
    let publisher = r.clone();
    async move {
        match publisher.publish(&o).await {
            Ok(()) => {
                match &counted {
                    Counted::Receipt(status) => publisher
                        .metrics
                        .receipts_total
                        .with_label_values(&[status])
                        .inc(),
                    Counted::Consent(status, source) => publisher
                        .metrics
                        .consents_total
                        .with_label_values(&[status, source])
                        .inc(),
                }
                tracing::debug!(kind = ?o.kind(), msgid = ?o.msgid, status = %o.status(), "callback outcome stored");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = ?o.kind(), msgid = ?o.msgid, "could not store a callback outcome; WeChat's retry will try again");
                Err(e)
            }
        }
    }
}

/// Counts the answer and turns it into the HTTP reply: `success` or 503 (WeChat retries).
fn respond(r: &Receipts, answer: Answer) -> Response {
    r.count(answer.label());
    if answer.is_success() {
        "success".into_response()
    } else {
        if answer == Answer::Pending {
            tracing::warn!(
                "callback outcome not confirmed within {ANSWER_WITHIN:?}; answering 503 so WeChat retries"
            );
        }
        reply(StatusCode::SERVICE_UNAVAILABLE, "try again")
    }
}

/// Stores one outcome per template of a subscription event, all at once, and answers
/// `success` only when every one is stored.
async fn store_subscription(
    r: &Arc<Receipts>,
    appid: Option<String>,
    ev: SubscriptionEvent,
) -> Response {
    let appid = appid.or_else(|| attribute(&r.accounts, &ev.to_user));
    if appid.is_none() {
        tracing::warn!(to_user = %ev.to_user, "subscription event for an original id no account declares (set original_id in [[accounts]])");
    }
    let stores = ev.items.iter().map(|item| {
        let touser = ev.from_user.clone();
        let template_id = item.template_id.clone();
        let (o, raw, counted) = match ev.kind.source() {
            Some(source) => {
                let status = item.consent_status();
                let counted = Counted::Consent(status.label(), source);
                let o = Outcome::consent(Consent {
                    appid: appid.clone(),
                    touser,
                    template_id,
                    status,
                    source: source.to_string(),
                    event_time: ev.create_time,
                });
                (o, item.status.clone().unwrap_or_default(), counted)
            }
            None => {
                let status = item.receipt_status();
                let counted = Counted::Receipt(status.label());
                let o = Outcome::receipt(Receipt {
                    appid: appid.clone(),
                    touser,
                    msgid: item.msg_id,
                    status,
                    errcode: item.error_code,
                    errmsg: item.error_status.clone(),
                    template_id: Some(template_id),
                });
                let raw = format!(
                    "{}:{}",
                    item.error_code.map_or_else(String::new, |c| c.to_string()),
                    item.error_status.as_deref().unwrap_or("")
                );
                (o, raw, counted)
            }
        };
        let key = ReceiptKey {
            to_user: ev.to_user.clone(),
            from_user: ev.from_user.clone(),
            create_time: ev.create_time,
            msg_id: item.msg_id.unwrap_or(0),
            status: raw,
            event: ev.kind.event_name().to_string(),
            template_id: item.template_id.clone(),
        };
        r.seen
            .store(key, ANSWER_WITHIN, publish_counted(r, o, counted))
    });
    let answers = futures_util::future::join_all(stores).await;
    respond(r, combine(&answers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(from_user: &str, msg_id: i64) -> ReceiptKey {
        ReceiptKey {
            to_user: "gh_7f083739789a".into(),
            from_user: from_user.into(),
            create_time: 1_700_000_000,
            msg_id,
            status: "success".into(),
            event: TEMPLATE_SEND_JOB_FINISH.into(),
            template_id: String::new(),
        }
    }

    /// A publish that counts its runs and, with `release`, ends only when the test says
    /// (`true`: confirmed, `false`: refused); without it, it is confirmed at once.
    fn publish(
        runs: &Arc<AtomicUsize>,
        release: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let ok = match release {
                Some(rx) => rx.await.unwrap_or(false),
                None => true,
            };
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("nacked"))
            }
        }
    }

    #[tokio::test]
    async fn a_retry_during_the_publish_waits_for_it_and_never_gets_success_early() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, rx) = tokio::sync::oneshot::channel();
        let first = d
            .store(
                key("o1", 5),
                Duration::from_millis(50),
                publish(&runs, Some(rx)),
            )
            .await;
        assert_eq!(first, Answer::Pending, "no confirm yet: 503, not success");
        let retry = {
            let d = d.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                d.store(key("o1", 5), Duration::from_secs(30), publish(&runs, None))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits for the confirm");
        release.send(true).unwrap();
        assert_eq!(retry.await.unwrap(), Answer::Joined);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "published once");
        let later = d
            .store(key("o1", 5), Duration::from_secs(1), publish(&runs, None))
            .await;
        assert_eq!(later, Answer::Duplicate);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_answer_comes_within_its_bound_even_if_the_publish_never_ends() {
        assert!(ANSWER_WITHIN < Duration::from_secs(5), "WeChat waits 5 s");
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (_never, rx) = tokio::sync::oneshot::channel::<bool>();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            d.store(
                key("o2", 6),
                Duration::from_millis(100),
                publish(&runs, Some(rx)),
            ),
        )
        .await
        .expect("answered within the bound, not when the publish ends");
        assert_eq!(answer, Answer::Pending);
        assert!(!answer.is_success());
    }

    #[tokio::test]
    async fn a_failed_publish_is_forgotten_so_the_retry_publishes_again() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (nack, rx) = tokio::sync::oneshot::channel();
        nack.send(false).unwrap();
        let first = d
            .store(
                key("o3", 7),
                Duration::from_secs(5),
                publish(&runs, Some(rx)),
            )
            .await;
        assert_eq!(first, Answer::Failed);
        let retry = d
            .store(key("o3", 7), Duration::from_secs(5), publish(&runs, None))
            .await;
        assert_eq!(retry, Answer::Stored);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stored_receipt_is_forgotten_after_the_dedupe_window() {
        let d = Dedupe::new(Duration::from_millis(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let k = key("o4", 8);
        assert_eq!(
            d.store(k.clone(), Duration::from_secs(5), publish(&runs, None))
                .await,
            Answer::Stored
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            d.store(k, Duration::from_secs(5), publish(&runs, None))
                .await,
            Answer::Stored,
            "past the window a push is a new receipt"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_field_of_the_key_tells_receipts_apart() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let base = key("o5", 0);
        let variants = [
            base.clone(),
            ReceiptKey {
                to_user: "gh_other".into(),
                ..base.clone()
            },
            ReceiptKey {
                from_user: "o6".into(),
                ..base.clone()
            },
            ReceiptKey {
                create_time: base.create_time + 1,
                ..base.clone()
            },
            ReceiptKey {
                msg_id: 1,
                ..base.clone()
            },
            ReceiptKey {
                status: "failed:user block".into(),
                ..base.clone()
            },
            ReceiptKey {
                event: "subscribe_msg_sent_event".into(),
                ..base.clone()
            },
            ReceiptKey {
                template_id: "tpl-b".into(),
                ..base.clone()
            },
        ];
        for k in variants {
            let a = d
                .store(k.clone(), Duration::from_secs(5), publish(&runs, None))
                .await;
            assert_eq!(a, Answer::Stored, "{k:?} is a receipt of its own");
        }
        let again = d
            .store(base, Duration::from_secs(5), publish(&runs, None))
            .await;
        assert_eq!(again, Answer::Duplicate, "all fields equal: WeChat's retry");
        assert_eq!(runs.load(Ordering::SeqCst), 8);
    }

    /// Issue 16.2: a push listing several templates is answered `success` only when every
    /// one of its outcomes is stored; one missing confirm makes it 503 so WeChat retries.
    #[test]
    fn a_multi_template_push_is_success_only_when_every_outcome_is_stored() {
        use Answer::*;
        assert_eq!(combine(&[Stored, Pending, Stored]), Pending);
        assert_eq!(
            combine(&[Stored, Failed, Pending]),
            Failed,
            "the retry must publish"
        );
        assert!(!combine(&[Duplicate, Duplicate, Pending]).is_success());
        assert!(
            !combine(&[]).is_success(),
            "no outcome stored is no success"
        );
        assert_eq!(combine(&[Stored, Stored]), Stored);
        assert_eq!(combine(&[Duplicate, Stored]), Stored);
        assert_eq!(combine(&[Duplicate, Joined]), Joined);
    }

    #[test]
    fn receipts_are_attributed_by_original_id_else_to_the_only_account() {
        let two = vec![
            ("wxa".to_string(), Some("gh_a".to_string())),
            ("wxb".to_string(), Some("gh_b".to_string())),
        ];
        assert_eq!(attribute(&two, "gh_b").as_deref(), Some("wxb"));
        assert_eq!(attribute(&two, "gh_a").as_deref(), Some("wxa"));
        assert_eq!(attribute(&two, "gh_c"), None, "no guess among several");
        let one = vec![("wxa".to_string(), None)];
        assert_eq!(attribute(&one, "gh_anything").as_deref(), Some("wxa"));
    }
}
