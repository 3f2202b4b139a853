//! `POST /wechat/component`: the platform's authorization pushes, always encrypted with the
//! platform's token and EncodingAESKey, the envelope naming the component appid. Each is
//! handled (in Redis) before it is answered `success`, so WeChat pushes again what was not.

use super::tokens::{Component, ComponentError};
use crate::callback::crypto::{self, AesKey};
use crate::callback::{signature, xml};
use crate::config::Secret;

/// The signature parameters of a push's query string.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PushQuery {
    pub timestamp: String,
    pub nonce: String,
    pub msg_signature: String,
}

/// An authorization push, handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEvent {
    /// A new `component_verify_ticket`, stored.
    Ticket,
    /// `authorized` or `updateauthorized`: the authorizer and its permission sets, stored.
    Authorized {
        appid: String,
        funcs: Vec<u32>,
        update: bool,
    },
    /// `unauthorized`: the authorizer is forgotten.
    Unauthorized { appid: String },
}

/// Why a push was not handled.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Not from WeChat for this platform: refused, never retried usefully.
    #[error("refused: {0}")]
    Refused(&'static str),
    /// Could not be handled now (Redis, WeChat): not answered `success`, so WeChat retries.
    #[error("not handled: {0}")]
    Unhandled(#[from] ComponentError),
}

/// Pushes are small; a larger body is refused before it is parsed.
const MAX_XML: usize = 64 * 1024;

impl Component {
    /// Verifies, decrypts and handles one push.
    pub async fn receive(
        &self,
        token: &Secret,
        key: &AesKey,
        q: &PushQuery,
        body: &str,
    ) -> Result<AuthEvent, PushError> {
        let outer = xml::parse_fields(body, MAX_XML).map_err(|e| PushError::Refused(e.reason()))?;
        let encrypted = outer
            .get("Encrypt")
            .ok_or(PushError::Refused("no Encrypt element"))?;
        if !signature::verify_msg_signature(
            &q.msg_signature,
            token.expose(),
            &q.timestamp,
            &q.nonce,
            encrypted,
        ) {
            return Err(PushError::Refused("bad msg_signature"));
        }
        let plain = crypto::decrypt(key, encrypted).map_err(|e| PushError::Refused(e.reason()))?;
        plain
            .check_appid(&[&self.api.appid])
            .map_err(|_| PushError::Refused("encrypted for another appid"))?;
        let inner =
            xml::parse_fields(&plain.xml, MAX_XML).map_err(|e| PushError::Refused(e.reason()))?;
        let field = |name: &'static str| {
            inner
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or(PushError::Refused(name))
        };
        match field("InfoType")? {
            "component_verify_ticket" => {
                let ticket = field("ComponentVerifyTicket")?;
                self.store
                    .set_ticket(ticket)
                    .await
                    .map_err(ComponentError::from)?;
                Ok(AuthEvent::Ticket)
            }
            kind @ ("authorized" | "updateauthorized") => {
                let code = field("AuthorizationCode")?;
                let (appid, funcs) = self.authorize(code).await?;
                Ok(AuthEvent::Authorized {
                    appid,
                    funcs,
                    update: kind == "updateauthorized",
                })
            }
            "unauthorized" => {
                let appid = field("AuthorizerAppid")?.to_string();
                self.store
                    .remove_authorizer(&appid)
                    .await
                    .map_err(ComponentError::from)?;
                Ok(AuthEvent::Unauthorized { appid })
            }
            _ => Err(PushError::Refused("unknown InfoType")),
        }
    }
}
