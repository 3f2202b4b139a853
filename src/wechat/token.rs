//! The HTTP calls that fetch an access token. WeChat's two token endpoints need the account's
//! AppSecret; a central token service (中控服务器) owns the account's token and needs none.
//! Which call an account makes, when and how often, and what an answer means for it, is the
//! token cache's business (`account::token`).

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::config::Secret;
use crate::wechat::client::{ApiReply, SendError, WechatClient};

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

/// `POST /cgi-bin/stable_token` with the AppSecret: every caller gets the same token, a new one
/// only when [`Ask::Forced`].
pub async fn stable_token(
    client: &WechatClient,
    appid: &str,
    secret: &Secret,
    ask: Ask<'_>,
) -> Result<ApiReply, SendError> {
    let body = serde_json::json!({
        "grant_type": "client_credential",
        "appid": appid,
        "secret": secret.expose(),
        "force_refresh": matches!(ask, Ask::Forced),
    });
    let req = client
        .http()
        .post(format!("{}/cgi-bin/stable_token", client.base()))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    client.execute(req).await
}

/// `GET /cgi-bin/token` with the AppSecret: each call issues a new token.
pub async fn classic_token(
    client: &WechatClient,
    appid: &str,
    secret: &Secret,
) -> Result<ApiReply, SendError> {
    let req = client
        .http()
        .get(format!("{}/cgi-bin/token", client.base()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", appid),
            ("secret", secret.expose()),
        ]);
    client.execute(req).await
}

/// A central token service: `GET {url}?appid=A`, and after a token error
/// `GET {url}?appid=A&invalid=<refused token>`, where the service decides whether to refresh.
/// It answers WeChat's shape (`access_token`, `expires_in`, or an `errcode`), so its reply reads
/// the same. `auth` goes in an `Authorization: Bearer` header.
pub async fn central_token(
    client: &WechatClient,
    url: &reqwest::Url,
    auth: Option<&Secret>,
    appid: &str,
    ask: Ask<'_>,
) -> Result<ApiReply, SendError> {
    let mut url = url.clone();
    url.query_pairs_mut().append_pair("appid", appid);
    if let Ask::Refused(token) = ask {
        url.query_pairs_mut().append_pair("invalid", token);
    }
    let req = client.http().get(url);
    let req = match auth {
        Some(a) => req.header(AUTHORIZATION, format!("Bearer {}", a.expose())),
        None => req,
    };
    client.execute(req).await
}
