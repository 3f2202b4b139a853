//! Everything that talks to WeChat's API: the HTTP client, the access-token cache and the
//! error-code policy table.

pub(crate) mod catalogue;
pub(crate) mod client;
pub mod errcode;
pub(crate) mod token;

pub use client::{ApiReply, SendError, WechatClient};
pub use errcode::Action;
pub use token::{TokenError, TokenLimits, TokenSource};
