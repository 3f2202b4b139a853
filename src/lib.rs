//! # wxdispatch
//!
//! A RabbitMQ worker that sends WeChat Official Account template messages (模板消息).
//!
//! Upstream systems publish *send jobs* (WeChat's own send body plus an id) to a queue. The
//! worker consumes them with manual acks, paces each account, keeps a shared access token
//! fresh, sends with the job id as `client_msg_id` so a retry can never produce a second
//! message, and publishes exactly one confirmed *outcome* per job (per recipient) before
//! acking it. It also receives WeChat's delivery receipts and subscription consents and publishes
//! them as outcomes.
//!
//! ## Layout
//! The product:
//! - [`config`]: the flat TOML file and `WXD_*` keys, validated once into grouped settings
//!   (`amqp`, `wechat`, `limits`, `retry`, `callback`) and, apart from them, the credentials.
//! - [`job`] and [`outcome`]: the message schemas of the contract; a parsed job carries its
//!   account, its template id and its data keys.
//! - [`policy`]: the decision core, with no I/O: the error-code table, the send-error kinds,
//!   the retry state a job carries, the budget and backoff rules, the function from what a
//!   try came to to the job's next step, and whether an authorizer's granted permission sets
//!   (component mode) allow a job's type.
//! - [`wechat`]: the HTTP client, the calls that fetch an access token (`stable_token`, the
//!   classic endpoint, a central token service) and the template catalogue's replies.
//! - [`account`]: one home per account: its rate limiter and quota gates, its stop state, its
//!   token cache (single flight, expiry, refresh ahead of it, forced-refresh budget, backoff,
//!   stops; it fetches through a token source: WeChat's calls, a central service or the
//!   platform) and catalogue cache, in component mode the authorizer's granted permission sets
//!   (cached), and the Redis coordination replicas share.
//! - [`component`]: third-party platform mode: the platform's endpoints, its tokens and
//!   authorizers in Redis (refresh-token rotation under a lock, refreshed ahead of expiry by
//!   one replica while the others use the still-valid token), its authorization pushes,
//!   their route `/wechat/component` and their `kind: authorization` outcomes.
//! - `dispatch`: carries a job's steps out: permission sets (component mode), admit, token,
//!   catalogue check, send, then what the policy decided (retry, defer, end).
//! - [`amqp`]: connections, topology, the confirming publisher.
//! - `worker`: the consume → dispatch → publish → ack loop and its supervisor.
//! - [`crypto`]: WeChat's message security, shared by the callback and the platform's pushes:
//!   the SHA-1 signatures and AES safe mode.
//! - [`callback`]: WeChat's push callback: the XML reader and the message model, the retry dedupe and the HTTP handlers that turn pushes into outcomes, and
//!   the forwarding of the pushes the worker does not own to the account's existing server.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz` and the callback route.
//! - [`metrics`], [`shutdown`], [`logging`]: operations; `probe`, the readiness check the
//!   image and its Kubernetes probes run.
//! - [`app`]: `run`, `check-config`, `templates` (its library function [`app::catalogues`]),
//!   and [`app::start`], the worker embedded in a
//!   process (the demo and the tests use it).
//! - [`publish`]: `wxdispatch publish`, validating and enqueueing a campaign: the run, the
//!   JSONL and CSV readers, the per-line check, the progress report.
//!
//! The tools, under [`tools`], which the product never imports:
//! - [`tools::mock`]: the WeChat API simulator, behind `wxdispatch mock-wechat` and the tests:
//!   its faults, its state and counts, one part per group of endpoints (tokens, sends,
//!   catalogues, the `/mock/*` controls), and the pushes it writes (`tools::mock::xml`,
//!   `tools::mock::push`).
//! - `tools::demo`: `wxdispatch demo`, the whole pipeline once, with a summary.
//! - `tools::bench`: `wxdispatch bench`, the end-to-end benchmark (orchestration, `/proc`
//!   readings, the report) and its libraries-only floor worker (docs/BENCHMARKS.md). Only
//!   with the cargo feature `bench`, so the default build has neither it nor `libc` and
//!   hyper's client as dependencies of its own.
//! - [`tools::sample`]: the sample job the demo, the bench and `examples/hotpath` use.
//!
//! [`cli`] names the subcommands and dispatches each to its module; `main.rs` only parses and
//! exits. The modules without a link are private to the crate.

#![warn(unreachable_pub)]

pub mod account;
pub mod amqp;
pub mod app;
pub mod callback;
pub mod cli;
pub mod component;
pub mod config;
pub mod crypto;
pub(crate) mod dispatch;
pub mod http;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod policy;
mod probe;
pub mod publish;
pub mod shutdown;
pub mod tools;
pub mod wechat;
pub(crate) mod worker;
