//! `POST /wechat/component`: the platform's authorization pushes, always encrypted with the
//! platform's token and EncodingAESKey, the envelope naming the component appid. Each is
//! handled (in Redis) before it is answered `success`, so WeChat pushes again what was not.

use super::tokens::{Component, ComponentError};
use crate::callback::xml;
use crate::config::Secret;
use crate::crypto::signature;
use crate::crypto::{self, AesKey};
use crate::outcome::{Authorization, AuthorizationStatus};

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

/// A push opened (authenticated, decrypted and read), not yet handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A new `component_verify_ticket`.
    Ticket(String),
    /// `authorized`, `updateauthorized` or `unauthorized`.
    Authorization {
        status: AuthorizationStatus,
        /// `AuthorizerAppid`.
        authorizer: String,
        /// `AuthorizationCode` (not on `unauthorized`).
        code: Option<String>,
        /// `CreateTime` (Unix seconds): with the above, what WeChat's retries repeat.
        create_time: i64,
    },
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

/// WeChat's "authorization code expired or already used".
const SPENT_CODE: i64 = 61010;

impl AuthEvent {
    /// The outcome's content for an authorization (`None` for a ticket).
    pub fn authorization(&self, component_appid: &str, event_time: i64) -> Option<Authorization> {
        let (appid, status, funcs) = match self {
            AuthEvent::Ticket => return None,
            AuthEvent::Authorized {
                appid,
                funcs,
                update,
            } => {
                let status = if *update {
                    AuthorizationStatus::UpdateAuthorized
                } else {
                    AuthorizationStatus::Authorized
                };
                (appid, status, Some(funcs.clone()))
            }
            AuthEvent::Unauthorized { appid } => (appid, AuthorizationStatus::Unauthorized, None),
        };
        Some(Authorization {
            appid: appid.clone(),
            component_appid: component_appid.to_string(),
            status,
            funcs,
            event_time,
        })
    }
}

impl Component {
    /// Verifies, decrypts and handles one push.
    pub async fn receive(
        &self,
        token: &Secret,
        key: &AesKey,
        q: &PushQuery,
        body: &str,
    ) -> Result<AuthEvent, PushError> {
        let push = self.open(token, key, q, body)?;
        Ok(self.handle(&push).await?)
    }

    /// Verifies, decrypts and reads one push; nothing is stored.
    pub fn open(
        &self,
        token: &Secret,
        key: &AesKey,
        q: &PushQuery,
        body: &str,
    ) -> Result<Push, PushError> {
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
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(PushError::Refused(name))
        };
        let info_type = field("InfoType")?;
        if info_type == "component_verify_ticket" {
            return Ok(Push::Ticket(field("ComponentVerifyTicket")?.to_string()));
        }
        let status = AuthorizationStatus::from_info_type(info_type)
            .ok_or(PushError::Refused("unknown InfoType"))?;
        let code = match status {
            AuthorizationStatus::Unauthorized => None,
            _ => Some(field("AuthorizationCode")?.to_string()),
        };
        Ok(Push::Authorization {
            status,
            authorizer: field("AuthorizerAppid")?.to_string(),
            code,
            create_time: field("CreateTime")?
                .parse()
                .map_err(|_| PushError::Refused("CreateTime"))?,
        })
    }

    /// Handles an opened push in Redis (and, for an authorization code, with WeChat).
    ///
    /// A code WeChat calls spent (61010) for an authorizer Redis has was exchanged by an
    /// earlier try of this push (whose outcome was not confirmed, so WeChat pushed it again,
    /// perhaps to another replica): handled, with the stored permission sets.
    pub async fn handle(&self, push: &Push) -> Result<AuthEvent, ComponentError> {
        match push {
            Push::Ticket(ticket) => {
                self.store.set_ticket(ticket).await?;
                Ok(AuthEvent::Ticket)
            }
            Push::Authorization {
                status: AuthorizationStatus::Unauthorized,
                authorizer,
                ..
            } => {
                self.store.remove_authorizer(authorizer).await?;
                Ok(AuthEvent::Unauthorized {
                    appid: authorizer.clone(),
                })
            }
            Push::Authorization {
                status,
                authorizer,
                code,
                ..
            } => {
                let update = *status == AuthorizationStatus::UpdateAuthorized;
                let (appid, funcs) = match self.authorize(code.as_deref().unwrap_or("")).await {
                    Ok(done) => done,
                    Err(ComponentError::Wechat { code, msg }) if code == SPENT_CODE => {
                        match self.store.authorizer_record(authorizer).await? {
                            Some(record) => {
                                tracing::info!(
                                    authorizer,
                                    "authorization code already exchanged by an earlier try of this push"
                                );
                                (authorizer.clone(), record.funcs)
                            }
                            None => return Err(ComponentError::Wechat { code, msg }),
                        }
                    }
                    Err(e) => return Err(e),
                };
                Ok(AuthEvent::Authorized {
                    appid,
                    funcs,
                    update,
                })
            }
        }
    }
}
