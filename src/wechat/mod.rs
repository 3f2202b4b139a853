//! Everything that talks to WeChat's API: the HTTP client, the calls that fetch an access
//! token and the template catalogue. The error-code table they follow is the policy's ([`crate::policy::errcode`]).

pub(crate) mod catalogue;
pub(crate) mod client;
pub mod token;

pub use crate::policy::errcode::{self, Action};
pub use client::{ApiReply, SendError, SharedLife, WechatClient};
pub use token::Ask;
