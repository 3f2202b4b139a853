//! The demo's account server: a small "existing server" behind the worker's callback
//! (`callback_forward_url`), which checks WeChat's signature as any account server does and
//! answers a user's text with a passive reply, so the demo shows one push forwarded and its
//! reply coming back to WeChat.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;

use crate::callback::{self, Inbound};
use crate::crypto::{self, AesKey, signature};
use crate::tools::mock::xml::seal_safe_mode;

/// The existing server's address and what it needs to check pushes.
pub(super) struct ExistingServer {
    pub url: String,
}

struct Keys {
    token: String,
    key: AesKey,
}

type Params = std::collections::HashMap<String, String>;

impl ExistingServer {
    pub(super) async fn start(token: &str, aes_key: &str) -> anyhow::Result<ExistingServer> {
        let keys = Arc::new(Keys {
            token: token.to_string(),
            key: AesKey::from_encoding_aes_key(aes_key).map_err(|e| anyhow::anyhow!("{e}"))?,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/wx", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/wx", axum::routing::post(reply))
            .with_state(keys);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(ExistingServer { url })
    }
}

/// Checks the push like an account server (the signature; in safe mode the message signature
/// and the decryption) and answers a text reply naming what it heard; 403 when it cannot.
async fn reply(
    State(k): State<Arc<Keys>>,
    Query(q): Query<Params>,
    body: String,
) -> axum::response::Response {
    let get = |n: &str| q.get(n).map(String::as_str).unwrap_or("");
    let (ts, nonce) = (get("timestamp"), get("nonce"));
    let safe = get("encrypt_type") == "aes";
    let xml = if !signature::verify_url_signature(get("signature"), &k.token, ts, nonce) {
        None
    } else if safe {
        match callback::parse(&body) {
            Ok(Inbound::Encrypted { encrypt, .. })
                if signature::verify_msg_signature(
                    get("msg_signature"),
                    &k.token,
                    ts,
                    nonce,
                    &encrypt,
                ) =>
            {
                crypto::decrypt(&k.key, &encrypt)
                    .ok()
                    .map(|d| (d.xml, d.appid))
            }
            _ => None,
        }
    } else {
        Some((body, String::new()))
    };
    let Some((xml, appid)) = xml else {
        return (axum::http::StatusCode::FORBIDDEN, "bad signature").into_response();
    };
    let fields = callback::xml::parse_fields(&xml, 16 * 1024).unwrap_or_default();
    let user = fields.get("FromUserName").unwrap_or("");
    let said = fields.get("Content").unwrap_or("");
    let text = format!(
        "<xml><ToUserName><![CDATA[{user}]]></ToUserName><FromUserName><![CDATA[gh_demo]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[the account's own server says: you wrote \"{said}\"]]></Content></xml>",
        chrono::Utc::now().timestamp()
    );
    let out = if safe {
        seal_safe_mode(&k.token, &k.key, &appid, user, &text, ts, nonce).body
    } else {
        text
    };
    ([(header::CONTENT_TYPE, "application/xml")], out).into_response()
}

/// Pushes one user text to the worker's callback as WeChat would, and returns the status and
/// the reply WeChat would show the user (decrypted in safe mode).
pub(super) async fn push_text(
    callback_url: &str,
    token: &str,
    aes_key: Option<&str>,
    appid: &str,
) -> anyhow::Result<(u16, String)> {
    let ts = chrono::Utc::now().timestamp().to_string();
    let nonce = rand::random::<u32>().to_string();
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_demo]]></ToUserName><FromUserName><![CDATA[odemo-user]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>{}</MsgId></xml>",
        rand::random::<u32>()
    );
    let mut query = vec![
        ("signature", signature::url_signature(token, &ts, &nonce)),
        ("timestamp", ts.clone()),
        ("nonce", nonce.clone()),
        ("openid", "odemo-user".to_string()),
    ];
    let key = aes_key
        .map(AesKey::from_encoding_aes_key)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let body = match &key {
        Some(key) => {
            let sealed = seal_safe_mode(token, key, appid, "gh_demo", &xml, &ts, &nonce);
            query.push(("encrypt_type", "aes".into()));
            query.push(("msg_signature", sealed.msg_signature));
            sealed.body
        }
        None => xml,
    };
    let r = reqwest::Client::new()
        .post(callback_url)
        .query(&query)
        .header("content-type", "text/xml")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let shown = match (&key, callback::parse(&text)) {
        (Some(key), Ok(Inbound::Encrypted { encrypt, .. })) => crypto::decrypt(key, &encrypt)
            .map(|d| d.xml)
            .unwrap_or(text),
        _ => text,
    };
    let content = callback::xml::parse_fields(&shown, 16 * 1024)
        .ok()
        .and_then(|f| f.get("Content").map(str::to_string))
        .unwrap_or(shown);
    Ok((status, content))
}
