//! Where an account's access token comes from: the seam the token cache fetches and refreshes
//! through. Three sources are HTTP calls (`crate::wechat`'s token calls); a third-party
//! platform's authorizer token comes from the platform ([`crate::component`]: Redis and
//! `api_authorizer_token`).

use std::sync::Arc;

use crate::component::Component;
use crate::config::{Secret, TokenMode};
use crate::wechat::token::{central_token, classic_token, stable_token};
use crate::wechat::{ApiReply, Ask, SendError, WechatClient};

/// One account's token source.
pub enum TokenSource {
    /// `POST /cgi-bin/stable_token` with the AppSecret: every caller gets the same token.
    Stable { secret: Secret },
    /// `GET /cgi-bin/token` with the AppSecret: each call issues a new token.
    Classic { secret: Secret },
    /// A central token service (中控服务器), told which token WeChat refused.
    Central {
        url: reqwest::Url,
        auth: Option<Secret>,
    },
    /// A third-party platform's authorizer: its token from `api_authorizer_token`, kept in
    /// Redis with the rotated refresh token.
    Component { platform: Arc<Component> },
}

impl TokenSource {
    /// The token mode this source belongs to.
    pub fn mode(&self) -> TokenMode {
        match self {
            TokenSource::Stable { .. } => TokenMode::Stable,
            TokenSource::Classic { .. } => TokenMode::Classic,
            TokenSource::Central { .. } => TokenMode::Central,
            TokenSource::Component { .. } => TokenMode::Component,
        }
    }

    /// Whether the source is told which token WeChat refused (`Ask::Refused`) and decides
    /// itself what to do, rather than the cache forcing a refresh.
    pub fn reports_refusals(&self) -> bool {
        matches!(
            self,
            TokenSource::Central { .. } | TokenSource::Component { .. }
        )
    }

    /// Whether a token past its refresh point is refreshed on use, in the background: a
    /// platform's authorizers, built on their first job and too many for a timer each.
    pub fn refreshes_ahead_on_use(&self) -> bool {
        matches!(self, TokenSource::Component { .. })
    }

    /// One call of the source for `appid`.
    pub async fn fetch(
        &self,
        client: &WechatClient,
        appid: &str,
        ask: Ask<'_>,
    ) -> Result<ApiReply, SendError> {
        match self {
            TokenSource::Stable { secret } => stable_token(client, appid, secret, ask).await,
            TokenSource::Classic { secret } => classic_token(client, appid, secret).await,
            TokenSource::Central { url, auth } => {
                central_token(client, url, auth.as_ref(), appid, ask).await
            }
            TokenSource::Component { platform } => platform.token_reply(appid, ask).await,
        }
    }
}
