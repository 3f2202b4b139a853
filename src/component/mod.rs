//! Third-party platform ("component") mode, issue 28 part 2: the platform's own endpoints
//! ([`api`]), what it keeps in Redis ([`store`]), its tokens with the refresh-token rotation
//! under a lock ([`tokens`]) and its authorization pushes ([`push`]).
//!
//! Not yet wired into the worker: the `/wechat/component` route, dynamic accounts (jobs for
//! any authorizer) and `kind: authorization` outcomes are still to come.

pub mod api;
pub mod push;
pub mod store;
pub mod tokens;

pub use push::{AuthEvent, PushError, PushQuery};
pub use tokens::{Component, ComponentError};
