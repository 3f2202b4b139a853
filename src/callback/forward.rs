//! Forwarding the pushes the worker does not own to the account's existing server.
//!
//! An Official Account has one server URL. With `callback_forward_url` set, the worker keeps
//! what it owns (receipts, subscription events, the URL check) and hands every other push to
//! the account's own server exactly as WeChat sent it: the same method, query string
//! (`signature`, `timestamp`, `nonce`, `openid`, `encrypt_type`, `msg_signature`), body bytes
//! and content type, so that server verifies and decrypts it as if WeChat had called it. Its
//! status and body go back to WeChat unchanged (the passive reply, encrypted by that server).
//!
//! WeChat waits 5 s. A forward gets `callback_forward_timeout_ms` (below 5 s) for the whole
//! exchange; a server that is slow, answers 5xx or cannot be reached costs WeChat a
//! `success`, not a retry storm. Each forward is counted in
//! `wxdispatch_callback_forward_total{result}` and timed in
//! `wxdispatch_callback_forward_duration_seconds`, and logged without the body (it may hold a
//! user's message).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::metrics::Metrics;

/// The largest reply passed back to WeChat. Passive replies (a news message of eight
/// articles at most) are a few KiB; anything far larger is not one.
pub(super) const MAX_REPLY: usize = 64 * 1024;

/// A push as WeChat sent it, kept byte for byte so it can be forwarded.
#[derive(Debug, Clone)]
pub(super) struct RawPush {
    pub method: Method,
    /// The query string as received, not re-encoded: the signatures are over its values.
    pub query: Option<String>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// The existing server's answer, passed to WeChat unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body).into_response();
        match self.content_type {
            Some(ct) => {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            None => {
                r.headers_mut().remove(header::CONTENT_TYPE);
            }
        }
        r
    }
}

/// How a forward went: the `result` label of `wxdispatch_callback_forward_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForwardResult {
    /// The server answered below 400; its answer went to WeChat.
    Ok,
    /// The server answered 4xx (often: it does not accept the signature, a token mismatch);
    /// its answer went to WeChat unchanged.
    Refused,
    /// The server answered 5xx; WeChat got `success`.
    ErrorStatus,
    /// No whole answer within the forward timeout; WeChat got `success`.
    Timeout,
    /// The server could not be reached (connection refused, reset, DNS); WeChat got `success`.
    Unreachable,
    /// The answer was larger than [`MAX_REPLY`] or broke off; WeChat got `success`.
    BadReply,
}

impl ForwardResult {
    pub(super) const ALL: [ForwardResult; 6] = [
        ForwardResult::Ok,
        ForwardResult::Refused,
        ForwardResult::ErrorStatus,
        ForwardResult::Timeout,
        ForwardResult::Unreachable,
        ForwardResult::BadReply,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            ForwardResult::Ok => "ok",
            ForwardResult::Refused => "refused",
            ForwardResult::ErrorStatus => "error_status",
            ForwardResult::Timeout => "timeout",
            ForwardResult::Unreachable => "unreachable",
            ForwardResult::BadReply => "bad_reply",
        }
    }
}

/// Creates every `result` series at zero, so a rate over them has data before the first
/// failure.
pub(super) fn create_series(metrics: &Metrics) {
    for result in ForwardResult::ALL {
        metrics
            .callback_forward_total
            .with_label_values(&[result.label()]);
    }
}

/// The forwarder: the target, its time limit and one pooled HTTP client for every forward.
pub(super) struct Forwarder {
    url: String,
    timeout: Duration,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Forwarder> {
        reqwest::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("callback_forward_url {url:?}: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // The answer goes to WeChat as it is; a redirect is WeChat's to follow (it will
            // not), not ours, and following it would send the push somewhere unconfigured.
            .redirect(reqwest::redirect::Policy::none())
            // One try: WeChat retries on its own, and a second try would not fit in 5 s.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("wxdispatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        create_series(&metrics);
        Ok(Forwarder {
            url: url.to_string(),
            timeout,
            http,
            metrics,
        })
    }

    /// The target with the push's own query string after the configured one.
    fn target(&self, query: Option<&str>) -> String {
        match query.filter(|q| !q.is_empty()) {
            None => self.url.clone(),
            Some(q) if self.url.contains('?') => format!("{}&{q}", self.url),
            Some(q) => format!("{}?{q}", self.url),
        }
    }

    /// Forwards `push` and reads the whole answer within the timeout; counted, timed and
    /// logged (without bodies).
    pub(super) async fn forward(&self, push: &RawPush) -> Result<Reply, ForwardResult> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.exchange(push))
            .await
            .unwrap_or(Err(ForwardResult::Timeout));
        let took = started.elapsed();
        self.metrics
            .callback_forward_duration_seconds
            .observe(took.as_secs_f64());
        let result = match &outcome {
            Ok(r) if r.status.is_client_error() => ForwardResult::Refused,
            Ok(_) => ForwardResult::Ok,
            Err(e) => *e,
        };
        self.metrics
            .callback_forward_total
            .with_label_values(&[result.label()])
            .inc();
        let status = outcome.as_ref().map_or(0, |r| r.status.as_u16());
        if matches!(result, ForwardResult::Ok) {
            tracing::debug!(status, took_ms = took.as_millis() as u64, "push forwarded");
        } else {
            tracing::warn!(
                result = result.label(),
                status,
                took_ms = took.as_millis() as u64,
                "forwarding a push to callback_forward_url did not get an answer to pass on"
            );
        }
        outcome
    }

    /// The answer for WeChat: the server's own, or `success` when there is none to pass on.
    pub(super) async fn answer(&self, push: &RawPush) -> Response {
        match self.forward(push).await {
            Ok(reply) => reply.into_response(),
            Err(_) => "success".into_response(),
        }
    }

    async fn exchange(&self, push: &RawPush) -> Result<Reply, ForwardResult> {
        let mut req = self
            .http
            .request(push.method.clone(), self.target(push.query.as_deref()))
            .body(push.body.clone());
        if let Some(ct) = &push.content_type {
            req = req.header(header::CONTENT_TYPE, ct.clone());
        }
        let mut resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                ForwardResult::Timeout
            } else {
                ForwardResult::Unreachable
            }
        })?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(ForwardResult::ErrorStatus);
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| ForwardResult::BadReply)? {
            if body.len() + chunk.len() > MAX_REPLY {
                return Err(ForwardResult::BadReply);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            content_type,
            body: body.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(url: &str) -> Forwarder {
        Forwarder::new(url, Duration::from_secs(1), Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn the_query_string_is_appended_as_received() {
        let f = forwarder("http://old.example/wx");
        assert_eq!(
            f.target(Some("signature=ab&timestamp=1&nonce=2&openid=o%2Dx")),
            "http://old.example/wx?signature=ab&timestamp=1&nonce=2&openid=o%2Dx"
        );
        assert_eq!(f.target(None), "http://old.example/wx");
        let f = forwarder("http://old.example/wx?site=3");
        assert_eq!(
            f.target(Some("nonce=2")),
            "http://old.example/wx?site=3&nonce=2"
        );
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused() {
        assert!(
            Forwarder::new(
                "not a url",
                Duration::from_secs(1),
                Arc::new(Metrics::new())
            )
            .is_err()
        );
    }

    /// Labels stay a small fixed set, all present from the start.
    #[test]
    fn every_result_is_a_series_from_the_start() {
        let f = forwarder("http://old.example/wx");
        let text = f.metrics.render();
        for r in ForwardResult::ALL {
            assert!(
                text.contains(&format!(
                    "wxdispatch_callback_forward_total{{result=\"{}\"}} 0",
                    r.label()
                )),
                "{text}"
            );
        }
    }

    /// Forwarding or publishing events without a callback token would do nothing at all.
    #[test]
    fn forwarding_without_a_callback_token_is_refused_at_start() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let metrics = || Arc::new(Metrics::new());
        for key in ["WXD_CALLBACK_FORWARD_URL", "WXD_CALLBACK_PUBLISH_EVENTS"] {
            let value = if key.ends_with("URL") {
                "http://old.example/wx"
            } else {
                "true"
            };
            let c = crate::config::Config::from_sources(None, &env(&[(key, value)])).unwrap();
            let e = crate::callback::http::Endpoint::from_config(&c, metrics())
                .err()
                .expect("refused");
            assert!(e.to_string().contains("WXD_CALLBACK_TOKEN"), "{e}");
        }
        let c = crate::config::Config::from_sources(None, &env(&[])).unwrap();
        assert!(
            crate::callback::http::Endpoint::from_config(&c, metrics())
                .unwrap()
                .is_none()
        );
        let c = crate::config::Config::from_sources(
            None,
            &env(&[
                ("WXD_CALLBACK_TOKEN", "t"),
                ("WXD_CALLBACK_FORWARD_URL", "http://old.example/wx"),
            ]),
        )
        .unwrap();
        assert!(
            crate::callback::http::Endpoint::from_config(&c, metrics())
                .unwrap()
                .is_some()
        );
    }
}
