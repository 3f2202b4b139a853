//! The faults the simulator injects: random ones by rate, in-band ones by openid
//! (`fail:<code>`, `flaky:<code>:<n>:<tag>`), outages, token-endpoint faults, and the reply
//! each one makes.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::send::SendBody;
use super::state::MockState;
use super::{wx, wx_err};

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// Answer with this WeChat errcode.
    Errcode(i64),
    /// Answer with this HTTP status and no JSON.
    Http(u16),
    /// Accept the message, then stall the reply.
    Timeout,
    /// Accept the message, then answer HTTP 200 with an HTML page instead of WeChat's JSON,
    /// as a proxy or captive portal would after forwarding the request.
    Html200,
    /// Accept the message, then answer HTTP 200 with JSON that has no `errcode`.
    Json200,
}

impl FaultKind {
    /// Whether WeChat takes the message before the fault hits its reply.
    pub(super) fn after_accept(self) -> bool {
        matches!(
            self,
            FaultKind::Timeout | FaultKind::Html200 | FaultKind::Json200
        )
    }
}

impl FaultKind {
    /// Parses `-1`, `45009`, `http502`, `timeout`, `html200` or `json200`.
    pub(crate) fn parse(s: &str) -> Result<FaultKind, String> {
        if s == "timeout" {
            Ok(FaultKind::Timeout)
        } else if s == "html200" {
            Ok(FaultKind::Html200)
        } else if s == "json200" {
            Ok(FaultKind::Json200)
        } else if let Some(code) = s.strip_prefix("http") {
            code.parse()
                .map(FaultKind::Http)
                .map_err(|_| format!("bad http status in {s:?}"))
        } else {
            s.parse()
                .map(FaultKind::Errcode)
                .map_err(|_| format!("bad fault {s:?}: use an errcode, httpNNN or timeout"))
        }
    }
}

/// A fault of the token endpoints (`/cgi-bin/token` and `/cgi-bin/stable_token`), so the
/// worker's token backoff and its circuit breaker can be tested without a real outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenFault {
    /// Answer with this WeChat errcode (`-1` system busy, `45009` the endpoint's daily limit).
    Errcode(i64),
    /// Answer with this HTTP status and no JSON.
    Http(u16),
    /// Answer `errcode: 0` with no `access_token`, as a broken proxy might.
    NoToken,
}

/// A random fault with the probability of hitting one send request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub rate: f64,
}

impl Fault {
    /// Parses `KIND:RATE`, e.g. `-1:0.05`.
    pub(crate) fn parse(s: &str) -> Result<Fault, String> {
        let (kind, rate) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("bad fault {s:?}: use KIND:RATE, e.g. -1:0.05"))?;
        let rate: f64 = rate.parse().map_err(|_| format!("bad rate in {s:?}"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rate in {s:?} must be between 0 and 1"));
        }
        Ok(Fault {
            kind: FaultKind::parse(kind)?,
            rate,
        })
    }
}

/// Settings that tests may change while the simulator runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Behaviour {
    pub faults: Vec<Fault>,
    pub latency_ms: u64,
    /// Daily template quota per appid; `None` means unlimited.
    pub quota: Option<u64>,
    pub token_ttl_secs: u64,
    /// How long a `timeout` fault stalls its reply.
    pub stall_ms: u64,
    /// When set, every request is refused with this fault (an outage).
    pub outage: Option<FaultKind>,
    /// When set, every call of a token endpoint is answered with this fault.
    #[serde(default)]
    pub token_outage: Option<TokenFault>,
    /// When set, every forced `stable_token` call (`force_refresh: true`) is answered with this
    /// fault, while normal calls are answered as usual.
    #[serde(default)]
    pub forced_token_fault: Option<TokenFault>,
    /// The template-message catalogue (`get_all_private_template`): `(template_id, content)`.
    /// `None`: the endpoint answers 48001, as for an account without the permission.
    #[serde(default)]
    pub private_templates: Option<Vec<(String, String)>>,
    /// The subscription-template catalogue (`wxaapi/newtmpl/gettemplate`), likewise.
    #[serde(default)]
    pub subscription_templates: Option<Vec<(String, String)>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            faults: Vec::new(),
            latency_ms: 0,
            quota: None,
            token_ttl_secs: 7200,
            stall_ms: 30_000,
            outage: None,
            token_outage: None,
            forced_token_fault: None,
            private_templates: None,
            subscription_templates: None,
        }
    }
}

/// Counts one try of a `flaky:<code>:<n>:<tag>` message; the fault to answer while the message
/// is within its first `n` tries.
pub(super) fn flaky_try(s: &MockState, req: &SendBody) -> Option<FaultKind> {
    let touser = req.touser.as_deref()?;
    let mut parts = touser.strip_prefix("flaky:")?.splitn(3, ':');
    let kind = FaultKind::parse(parts.next()?).ok()?;
    let n: u32 = parts.next()?.parse().ok()?;
    let key = (
        touser.to_string(),
        req.client_msg_id.clone().unwrap_or_default(),
    );
    let mut tries = s.tries.lock().unwrap();
    let t = tries.entry(key).or_default();
    *t += 1;
    (*t <= n).then_some(kind)
}

pub(super) async fn fault_reply(s: &MockState, kind: FaultKind, stall_ms: u64) -> Response {
    match kind {
        FaultKind::Errcode(code) => {
            s.error(code.to_string());
            let msg = crate::wechat::errcode::lookup(code)
                .map(|i| i.en)
                .unwrap_or("error");
            wx_err(code, msg)
        }
        FaultKind::Http(status) => {
            s.error(format!("http{status}"));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            // Throttling answers say when to come back, as front ends and proxies do.
            let throttled = matches!(status.as_u16(), 408 | 425 | 429 | 503);
            let mut resp = (status, "<html>bad gateway</html>").into_response();
            if throttled {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            resp
        }
        FaultKind::Html200 => {
            s.error("html200".into());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service temporarily unavailable</body></html>",
            )
                .into_response()
        }
        FaultKind::Json200 => {
            s.error("json200".into());
            wx(serde_json::json!({"status": "accepted"}))
        }
        FaultKind::Timeout => {
            s.error("timeout".into());
            tokio::time::sleep(Duration::from_millis(stall_ms)).await;
            wx_err(-1, "system error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let f = Fault::parse("-1:0.05").unwrap();
        assert_eq!(f.kind, FaultKind::Errcode(-1));
        assert_eq!(
            Fault::parse("http502:1").unwrap().kind,
            FaultKind::Http(502)
        );
        assert_eq!(Fault::parse("timeout:0").unwrap().kind, FaultKind::Timeout);
        assert!(Fault::parse("oops").is_err());
        assert!(Fault::parse("-1:2").is_err());
    }
}
