//! An account's existing server, as the forwarding tests need it: a real HTTP server that
//! checks WeChat's signature (and decrypts safe mode) with the project's own code, exactly as
//! a server WeChat calls must, and answers a passive reply of its own; and WeChat's side of a
//! push, to send one to either server and keep every byte of the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use wxdispatch::callback::{self, Inbound};
use wxdispatch::crypto::{self, AesKey, signature};
use wxdispatch::tools::mock::xml::seal_safe_mode;

use crate::helpers::APPID;
use crate::receipts::{AES_KEY, TOKEN};

/// The content type the existing server answers with: not the request's, so a test sees it
/// passed on rather than made up.
pub const REPLY_TYPE: &str = "application/xml; charset=utf-8";

/// How the existing server behaves.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Checks the push and answers a passive reply after `latency`.
    Reply { latency: Duration },
    /// Answers nothing for this long.
    Sleep(Duration),
    /// Answers 500.
    Fail,
}

/// One request the existing server got, byte for byte, with what it made of it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The signature checked (and, in safe mode, the body decrypted) as WeChat's docs say.
    pub verified: bool,
    /// The push's XML (decrypted in safe mode).
    pub xml: String,
    /// What it answered (the body), when it answered.
    pub reply: Option<Bytes>,
}

pub struct OldServer {
    pub mode: Mutex<Mode>,
    /// The reverse set-up: this server stays on the account's URL and hands wxdispatch's
    /// pushes (receipts, subscription events) to this callback URL as they came.
    pub in_front_of: Mutex<Option<String>>,
    pub seen: Mutex<Vec<Seen>>,
    pub url: String,
    key: AesKey,
}

impl OldServer {
    /// Starts the server on a free port.
    pub async fn start(mode: Mode) -> Arc<OldServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(OldServer {
            mode: Mutex::new(mode),
            in_front_of: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            url: format!("http://{addr}/wx"),
            key: AesKey::from_encoding_aes_key(AES_KEY).unwrap(),
        });
        let app = axum::Router::new()
            .route("/wx", axum::routing::post(handle))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Checks the push as a WeChat server must, then answers per [`Mode`]. A push it cannot
/// verify is answered 403 (and recorded, so a test sees it arrived).
async fn handle(
    State(s): State<Arc<OldServer>>,
    method: axum::http::Method,
    RawQuery(raw): RawQuery,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let (ts, nonce) = (get("timestamp"), get("nonce"));
    let opened = open(&s.key, &q, &body);
    let mut seen = Seen {
        method: method.to_string(),
        query: raw,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string()),
        body: body.clone(),
        verified: opened.is_some(),
        xml: opened.clone().unwrap_or_default(),
        reply: None,
    };
    let mode = *s.mode.lock().unwrap();
    let index = {
        let mut all = s.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let Some(xml) = opened else {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    };
    let front = s.in_front_of.lock().unwrap().clone();
    // The one `if` of the reverse set-up (README): wxdispatch's pushes go to it untouched.
    if let Some(wxdispatch) = front.filter(|_| {
        xml.contains("<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>")
            || xml.contains("<Event><![CDATA[subscribe_msg_")
    }) {
        return relay(&wxdispatch, seen.query.as_deref(), &headers, body).await;
    }
    match mode {
        Mode::Fail => return (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        Mode::Sleep(d) => tokio::time::sleep(d).await,
        Mode::Reply { latency } => tokio::time::sleep(latency).await,
    }
    let fields = callback::xml::parse_fields(&xml, 64 * 1024).unwrap();
    let said = fields
        .get("Content")
        .or(fields.get("EventKey"))
        .unwrap_or("?");
    let user = fields.get("FromUserName").unwrap_or("?");
    // The nonce makes every reply unique, so a test sees which request it belongs to.
    let reply_xml = format!(
        "<xml><ToUserName><![CDATA[{user}]]></ToUserName><FromUserName><![CDATA[gh_old]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[old server heard {said} ({nonce})]]></Content></xml>"
    );
    let reply: Bytes = if get("encrypt_type") == "aes" {
        seal_safe_mode(TOKEN, &s.key, APPID, user, &reply_xml, &ts, &nonce)
            .body
            .into()
    } else {
        reply_xml.into()
    };
    seen.reply = Some(reply.clone());
    s.seen.lock().unwrap()[index] = seen;
    ([(header::CONTENT_TYPE, REPLY_TYPE)], reply).into_response()
}

/// Passes a push to wxdispatch as it came (query string, content type, body) and its answer
/// back as it is.
async fn relay(url: &str, query: Option<&str>, headers: &HeaderMap, body: Bytes) -> Response {
    let mut req = reqwest::Client::new()
        .post(format!("{url}?{}", query.unwrap_or("")))
        .body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct.clone());
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            (status, r.bytes().await.unwrap_or_default()).into_response()
        }
        Err(_) => (StatusCode::BAD_GATEWAY, "").into_response(),
    }
}

/// The push's XML if its signature holds (and, in safe mode, it decrypts for this account).
fn open(
    key: &AesKey,
    q: &std::collections::HashMap<String, String>,
    body: &[u8],
) -> Option<String> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if !signature::verify_url_signature(get("signature"), TOKEN, get("timestamp"), get("nonce")) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    if get("encrypt_type") != "aes" {
        return Some(text.to_string());
    }
    let Ok(Inbound::Encrypted { encrypt, .. }) = callback::parse(text) else {
        return None;
    };
    if !signature::verify_msg_signature(
        get("msg_signature"),
        TOKEN,
        get("timestamp"),
        get("nonce"),
        &encrypt,
    ) {
        return None;
    }
    let d = crypto::decrypt(key, &encrypt).ok()?;
    (d.appid == APPID).then_some(d.xml)
}

/// One push as WeChat sends it, and everything of the answer.
pub struct Push {
    pub query: Vec<(&'static str, String)>,
    pub body: String,
}

/// WeChat's answer to a push, as WeChat gets it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub took: Duration,
}

impl Push {
    /// `xml` as WeChat pushes it, in safe mode (sealed for [`APPID`]) or plaintext.
    pub fn new(xml: &str, safe: bool) -> Push {
        let ts = chrono::Utc::now().timestamp().to_string();
        let nonce = rand::random::<u32>().to_string();
        let mut query = vec![
            ("signature", signature::url_signature(TOKEN, &ts, &nonce)),
            ("timestamp", ts.clone()),
            ("nonce", nonce.clone()),
            ("openid", "oFromTheQuery".to_string()),
        ];
        let body = if safe {
            let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
            let sealed = seal_safe_mode(TOKEN, &key, APPID, "gh_old", xml, &ts, &nonce);
            query.push(("encrypt_type", "aes".into()));
            query.push(("msg_signature", sealed.msg_signature));
            sealed.body
        } else {
            xml.to_string()
        };
        Push { query, body }
    }

    pub fn nonce(&self) -> &str {
        &self.query[2].1
    }

    /// The query string as sent.
    pub fn query_string(&self) -> String {
        self.query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// POSTs it to `url` and keeps every byte of the answer.
    pub async fn send(&self, http: &reqwest::Client, url: &str) -> Answer {
        let started = std::time::Instant::now();
        let r = http
            .post(format!("{url}?{}", self.query_string()))
            .header("content-type", "text/xml")
            .body(self.body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("an answer");
        let status = r.status();
        let content_type = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        Answer {
            status,
            content_type,
            body,
            took: started.elapsed(),
        }
    }
}

/// A user's text message.
pub fn text(user: &str, content: &str, msg_id: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_old]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        chrono::Utc::now().timestamp()
    )
}

/// An event push (`subscribe`, `CLICK`, ...) with an optional `EventKey` and extra fields.
pub fn event(user: &str, event: &str, key: Option<&str>, extra: &str) -> String {
    let key = key.map_or(String::new(), |k| {
        format!("<EventKey><![CDATA[{k}]]></EventKey>")
    });
    format!(
        "<xml><ToUserName><![CDATA[gh_old]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>{key}{extra}</xml>",
        chrono::Utc::now().timestamp()
    )
}
