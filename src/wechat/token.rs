//! Where an access token comes from: the HTTP calls that fetch one. WeChat's two token
//! endpoints need the account's AppSecret; a central token service (中控服务器) owns the
//! account's token and needs none; a third-party platform's authorizer token comes from the
//! platform ([`crate::component`], Redis and `api_authorizer_token`). When to call, how often, and what an answer means for the
//! account is the token cache's business ([`crate::account::token`]).

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::config::{Secret, TokenMode};
use crate::wechat::client::{ApiReply, SendError, WechatClient};

/// One account's token source: the seam the token cache fetches and refreshes through.
pub enum TokenSource {
    /// `POST /cgi-bin/stable_token` with the AppSecret: every caller gets the same token.
    Stable { secret: Secret },
    /// `GET /cgi-bin/token` with the AppSecret: each call issues a new token.
    Classic { secret: Secret },
    /// A central token service (中控服务器): `GET {url}?appid=A`, and after a token error
    /// `GET {url}?appid=A&invalid=<refused token>`, where the service decides whether to
    /// refresh. `auth` goes in an `Authorization: Bearer` header.
    Central {
        url: reqwest::Url,
        auth: Option<Secret>,
    },
    /// A third-party platform's authorizer: its token from `api_authorizer_token`, kept in
    /// Redis with the rotated refresh token ([`crate::component`]).
    Component {
        platform: std::sync::Arc<crate::component::Component>,
    },
}

/// What the cache asks its source for.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// The current token.
    Current,
    /// A new token even if the current one is valid (`stable_token`'s `force_refresh`); the
    /// other sources answer it as [`Ask::Current`].
    Forced,
    /// The current token, telling the source that WeChat refused this one (a central service
    /// decides whether to refresh); WeChat's endpoints answer it as [`Ask::Current`].
    Refused(&'a str),
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

    /// One call of the source for `appid`. A central service answers WeChat's shape
    /// (`access_token`, `expires_in`, or an `errcode`), so its reply reads the same.
    pub async fn fetch(
        &self,
        client: &WechatClient,
        appid: &str,
        ask: Ask<'_>,
    ) -> Result<ApiReply, SendError> {
        let http = client.http();
        let req = match self {
            TokenSource::Component { platform } => return platform.token_reply(appid, ask).await,
            TokenSource::Stable { secret } => {
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": appid,
                    "secret": secret.expose(),
                    "force_refresh": matches!(ask, Ask::Forced),
                });
                http.post(format!("{}/cgi-bin/stable_token", client.base()))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
            }
            TokenSource::Classic { secret } => http
                .get(format!("{}/cgi-bin/token", client.base()))
                .query(&[
                    ("grant_type", "client_credential"),
                    ("appid", appid),
                    ("secret", secret.expose()),
                ]),
            TokenSource::Central { url, auth } => {
                let mut url = url.clone();
                url.query_pairs_mut().append_pair("appid", appid);
                if let Ask::Refused(token) = ask {
                    url.query_pairs_mut().append_pair("invalid", token);
                }
                let req = http.get(url);
                match auth {
                    Some(a) => req.header(AUTHORIZATION, format!("Bearer {}", a.expose())),
                    None => req,
                }
            }
        };
        client.execute(req).await
    }
}
