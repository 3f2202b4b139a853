//! `wxdispatch mock-wechat`: a local simulator of the WeChat API endpoints wxdispatch uses.
//!
//! It answers like WeChat (JSON with `Content-Type: text/plain`), enforces the things the
//! worker must respect (token validity, the daily quota, deduplication of
//! `(touser, client_msg_id)` for 10 minutes) and injects faults on demand, so the tests, the
//! demo and the benchmarks exercise every path without a real account.
//!
//! It serves the three send endpoints (template, subscription bizsend, mini-program subscribe)
//! with the same faults; the two subscription endpoints take no `client_msg_id`, so they never
//! deduplicate, and the mini-program one has its own daily quota count.
//!
//! Faults come three ways:
//! - random, by rate: `--fail -1:0.05 --fail http502:0.01 --fail timeout:0.001`;
//! - deterministic, in-band by openid: `fail:<code>` always answers `<code>`, and
//!   `flaky:<code>:<n>:<anything>` answers `<code>` to the first `n` tries of a message
//!   (`<code>` may also be `http502` or `timeout`);
//! - at run time, via `POST /mock/faults`, `POST /mock/expire_tokens` and `POST /mock/outage`;
//! - on the token endpoints, `Behaviour::token_outage`: every `token` and `stable_token` call
//!   is answered with a [`TokenFault`] while it is set; `Behaviour::forced_token_fault` does
//!   the same to forced `stable_token` calls only.
//!
//! A "timeout" fault accepts the message and then stalls the reply, which is exactly the case
//! where a careless retry would send a second message.
//!
//! `GET /mock/stats` reports what was received: requests, unique messages, duplicates
//! suppressed, per-second send counts per appid, token calls and errors by code.
//!
//! The parts: `faults` (what can go wrong and the replies it makes), `state` (what the
//! simulator remembers and counts), `token` (the two token endpoints and the access-token
//! check), `send` (the three send endpoints), `catalogue` (the two template catalogues) and
//! `control` (WeChat's `clear_quota` and the `/mock/*` endpoints tests drive it with). Each new
//! endpoint is a handler and a route in its part's `routes`; a new part is one line in `router`.

mod catalogue;
mod command;
mod control;
mod faults;
pub mod push;
mod send;
mod state;
mod token;
pub mod xml;

pub use catalogue::{sample_private_templates, sample_subscription_templates};
pub use command::{Args, serve_simulator};
pub use faults::{Behaviour, Fault, FaultKind, TokenFault};
pub use state::{FIRST_MSGID, MockState, Stats};
pub use token::FORCED_REFRESHES_PER_DAY;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::shutdown::Shutdown;

/// Simulator configuration.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// `(appid, secret)` pairs it accepts.
    pub accounts: Vec<(String, String)>,
    pub behaviour: Behaviour,
    /// Where to push TEMPLATESENDJOBFINISH receipts after successful sends.
    pub push: Option<push::PushTarget>,
}

type Shared = Arc<MockState>;

/// A running simulator.
pub struct MockServer {
    pub addr: std::net::SocketAddr,
    pub state: Shared,
    shutdown: Shutdown,
}

impl MockServer {
    /// Where the simulator pushes receipts and events, if anywhere.
    pub(crate) fn push_target(&self) -> Option<push::PushTarget> {
        self.state.push.clone()
    }

    /// Starts a simulator on `listen` (use port 0 for a free port).
    pub async fn start(listen: &str, config: MockConfig) -> std::io::Result<MockServer> {
        let state = Arc::new(MockState::new(
            config.accounts,
            config.behaviour,
            config.push,
        ));
        let shutdown = Shutdown::new();
        let (addr, _) = crate::http::serve(listen, router(state.clone()), shutdown.clone()).await?;
        Ok(MockServer {
            addr,
            state,
            shutdown,
        })
    }

    /// The base URL to give the worker as `api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .merge(token::routes())
        .merge(send::routes())
        .merge(catalogue::routes())
        .merge(control::routes())
        .with_state(state)
}

/// WeChat answers JSON as text/plain.
fn wx(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], value.to_string()).into_response()
}

fn wx_err(code: i64, msg: &str) -> Response {
    wx(serde_json::json!({"errcode": code, "errmsg": msg}))
}
