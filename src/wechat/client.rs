//! A thin reqwest client for the few WeChat endpoints wxdispatch calls.
//!
//! WeChat often answers JSON with `Content-Type: text/plain`, so bodies are parsed as JSON
//! whatever the header says. Transport failures are classified by whether the message may have
//! reached WeChat: a refused connection certainly did not, a timeout or a 5xx may have.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

use crate::config::Secret;
use crate::job::MsgType;
pub use crate::policy::SendError;

/// WeChat's common reply shape: `{errcode, errmsg, ...}` plus endpoint-specific fields.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ApiReply {
    pub errcode: i64,
    pub errmsg: String,
    /// Message id of a template send; it can exceed i32.
    pub msgid: Option<i64>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
    /// Not WeChat's: what a source that shares one token between replicas (a platform's
    /// authorizer token in Redis) knows of its life, to the millisecond.
    #[serde(skip)]
    pub shared_life: Option<SharedLife>,
}

/// A shared token's life as its source keeps it, so every replica's cache sees the same
/// expiry and asks for the new token at the same point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLife {
    pub expires_in_ms: u64,
    /// Until the token is refreshed ahead of its expiry.
    pub refresh_in_ms: u64,
}

/// The HTTP client. One per process: it holds the keep-alive connection pool.
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: String,
    /// The send endpoints, one per [`MsgType`] in [`MsgType::ALL`] order, parsed once: parsing
    /// the whole URL (host, IDNA) for every message is a visible share of the worker's CPU
    /// (docs/BENCHMARKS.md).
    send_urls: [reqwest::Url; 3],
    /// The send endpoints with an access token in their query, for the latest tokens (newest
    /// first): writing a token of about 140 characters into the query (`Url::set_query`
    /// checks and copies every character) for every message cost more than the rest of the
    /// request building. A token lives for hours, so each is built once.
    token_urls: Arc<Mutex<VecDeque<TokenUrls>>>,
}

/// The send endpoints with one access token in their query, each built on its first use: a
/// platform's authorizer mostly sends one type, and with thousands of authorizers most sends
/// miss the cache, where building all three was three times the work.
struct TokenUrls {
    token: Secret,
    urls: [Option<reqwest::Url>; 3],
}

/// How many tokens' endpoints are kept: more than the accounts a worker usually serves, each
/// with its current token and the previous one while it is replaced.
const TOKEN_URLS: usize = 32;

/// The path of each message type's send endpoint.
pub(crate) const fn send_path(t: MsgType) -> &'static str {
    match t {
        MsgType::Template => "/cgi-bin/message/template/send",
        MsgType::Subscribe => "/cgi-bin/message/subscribe/bizsend",
        MsgType::MiniprogramSubscribe => "/cgi-bin/message/subscribe/send",
    }
}

impl WechatClient {
    /// A client that keeps up to 512 idle connections (tools and tests).
    pub fn new(base: &str, timeout: Duration) -> WechatClient {
        WechatClient::with_connections(base, timeout, 512)
    }

    /// A client that keeps up to `connections` idle connections to WeChat. HTTP/1.1 carries one
    /// request per connection at a time, so the worker needs as many as it has sends in flight:
    /// with fewer, every send past the cap closes its connection after the reply and the next
    /// one opens (and, over TLS, handshakes) a new one, which at 1,000 in flight is most of them.
    pub(crate) fn with_connections(
        base: &str,
        timeout: Duration,
        connections: usize,
    ) -> WechatClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            // WeChat's API never redirects, and a redirect would carry the access token in the
            // query to wherever it points; an unexpected 3xx comes back as an HTTP status and
            // the job is rejected. (reqwest's redirect layer still parses each request's URL
            // once, even with this policy.)
            .redirect(reqwest::redirect::Policy::none())
            // Every retry is the dispatcher's, counted as an attempt and paced (ERROR_POLICY.md).
            // reqwest's own default (re-sending after an HTTP/2 refusal) would hide one, and
            // readies it by cloning every request's headers before the send.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("wxdispatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        let base = base.trim_end_matches('/').to_string();
        let send_urls = MsgType::ALL.map(|t| {
            reqwest::Url::parse(&format!("{base}{}", send_path(t)))
                .unwrap_or_else(|e| panic!("api_base {base:?} is not a URL: {e}"))
        });
        WechatClient {
            http,
            base,
            send_urls,
            token_urls: Arc::default(),
        }
    }

    /// The send endpoint of type `t` with `token` in its query.
    fn send_url(&self, t: MsgType, token: &Secret) -> reqwest::Url {
        let mut cache = self
            .token_urls
            .lock()
            .expect("the URL cache lock is never poisoned");
        let build = || {
            let mut url = self.send_urls[t as usize].clone();
            url.set_query(Some(&format!("access_token={}", token.expose())));
            url
        };
        if let Some(known) = cache.iter_mut().find(|k| k.token == *token) {
            return known.urls[t as usize].get_or_insert_with(build).clone();
        }
        let url = build();
        let mut urls = [None, None, None];
        urls[t as usize] = Some(url.clone());
        cache.truncate(TOKEN_URLS - 1);
        cache.push_front(TokenUrls {
            token: token.clone(),
            urls,
        });
        url
    }

    /// `POST /cgi-bin/message/template/send` with a pre-serialized body.
    pub async fn send_template(
        &self,
        token: &Secret,
        body: bytes::Bytes,
    ) -> Result<ApiReply, SendError> {
        self.send(MsgType::Template, token, body).await
    }

    /// Sends a pre-serialized body to the endpoint of message type `t`. Every type answers
    /// `{errcode, errmsg}`, the template send (and sometimes bizsend) with a `msgid`.
    pub async fn send(
        &self,
        t: MsgType,
        token: &Secret,
        body: bytes::Bytes,
    ) -> Result<ApiReply, SendError> {
        let req = self
            .http
            .post(self.send_url(t, token))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let reply: SendReply = self.execute(req).await?;
        // WeChat always answers a send with an errcode. A 200 without one (an HTML page from a
        // proxy, `{}`) is not WeChat's verdict: the message may or may not have gone out, so it
        // must not count as sent.
        let errcode = reply
            .errcode
            .ok_or_else(|| SendError::BadReply("a 200 reply without errcode".into()))?;
        Ok(ApiReply {
            errcode,
            errmsg: reply.errmsg,
            msgid: reply.msgid,
            ..ApiReply::default()
        })
    }

    /// Fetches one of the account's template catalogues (`GET`, the token in the query).
    pub(crate) async fn fetch_catalogue(
        &self,
        token: &Secret,
        source: crate::wechat::catalogue::Source,
    ) -> Result<crate::wechat::catalogue::CatalogueReply, SendError> {
        let req = self
            .http
            .get(format!("{}{}", self.base, source.path()))
            .query(&[("access_token", token.expose())]);
        self.execute(req).await
    }

    /// The connection pool, for the token calls ([`crate::wechat::token`]).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The API base URL, without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads its JSON reply, whatever its content type.
    pub(crate) async fn execute<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, SendError> {
        let resp = req.send().await.map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            return Err(SendError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let bytes = resp.bytes().await.map_err(classify)?;
        serde_json::from_slice(&bytes).map_err(|e| SendError::BadReply(e.to_string()))
    }
}

/// The reply of a send, where a missing `errcode` must be told apart from 0.
#[derive(Deserialize)]
struct SendReply {
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    msgid: Option<i64>,
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), capped at a day so a
/// broken proxy cannot park a job for longer than a quota pause would.
fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(24 * 3600);
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - now)
        .num_milliseconds()
        .max(0);
    Some(Duration::from_millis(ms as u64).min(CAP))
}

/// Classifies a reqwest error without ever formatting its URL (which holds the token).
fn classify(e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::Timeout
    } else if e.is_connect() {
        SendError::Connect(source_text(&e))
    } else {
        SendError::BadReply(source_text(&e))
    }
}

fn source_text(e: &reqwest::Error) -> String {
    let e = e.without_url_ref();
    let mut s = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> &(dyn std::error::Error + 'static);
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> &(dyn std::error::Error + 'static) {
        // The top-level Display of a reqwest error includes the URL; its sources do not.
        match std::error::Error::source(self) {
            Some(src) => src,
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_with_large_msgids_and_missing_fields() {
        let r: ApiReply =
            serde_json::from_str(r#"{"errcode":0,"errmsg":"ok","msgid":5000000000}"#).unwrap();
        assert_eq!(r.msgid, Some(5_000_000_000));
        let r: ApiReply =
            serde_json::from_str(r#"{"access_token":"T","expires_in":7200}"#).unwrap();
        assert_eq!(r.errcode, 0);
        assert_eq!(r.access_token.as_deref(), Some("T"));
    }

    /// The cached endpoints are the ones built per message before the cache: each token gets
    /// its own, also after more tokens than the cache holds.
    #[test]
    fn send_urls_carry_their_token() {
        let client = WechatClient::new("http://wx.example/", Duration::from_secs(1));
        let built = |t: MsgType, token: &str| {
            let mut url = reqwest::Url::parse("http://wx.example").unwrap();
            url.set_path(send_path(t));
            url.set_query(Some(&format!("access_token={token}")));
            url
        };
        let odd = "a/b+c d%e&f";
        for round in 0..2 {
            for t in MsgType::ALL {
                assert_eq!(
                    client.send_url(t, &Secret::new(odd)),
                    built(t, odd),
                    "{round}"
                );
            }
        }
        for i in 0..2 * TOKEN_URLS {
            let token = format!("T{i}");
            let url = client.send_url(MsgType::Subscribe, &Secret::new(token.as_str()));
            assert_eq!(url, built(MsgType::Subscribe, &token));
        }
        let url = client.send_url(MsgType::Template, &Secret::new(odd));
        assert_eq!(url, built(MsgType::Template, odd), "an evicted token again");
    }

    #[test]
    fn only_connect_errors_are_certainly_unsent() {
        assert!(!SendError::Connect("refused".into()).maybe_sent());
        assert!(SendError::Timeout.maybe_sent());
        let status = |status| SendError::Status {
            status,
            retry_after: None,
        };
        assert!(status(502).maybe_sent());
        assert_eq!(status(502).label(), "http_502");
        assert!(
            !status(429).maybe_sent(),
            "a 429 was refused before WeChat saw it"
        );
        assert!(SendError::BadReply("html".into()).maybe_sent());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
