//! Authorization outcomes (kind `authorization`): a merchant authorized a third-party platform
//! (component mode), changed what it granted, or revoked it. One per push across WeChat's
//! retries; routing key `authorization.<status>`.

use serde::Serialize;

use super::{Outcome, Status};

/// What the merchant did: WeChat's `InfoType`, which is already lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizationStatus {
    Authorized,
    UpdateAuthorized,
    Unauthorized,
}

impl AuthorizationStatus {
    /// Every status, in declaration order.
    pub const ALL: [AuthorizationStatus; 3] = [
        AuthorizationStatus::Authorized,
        AuthorizationStatus::UpdateAuthorized,
        AuthorizationStatus::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationStatus::Authorized => "authorized",
            AuthorizationStatus::UpdateAuthorized => "updateauthorized",
            AuthorizationStatus::Unauthorized => "unauthorized",
        }
    }

    /// WeChat's `InfoType`; `None` for the other pushes (`component_verify_ticket`).
    pub fn from_info_type(info_type: &str) -> Option<AuthorizationStatus> {
        AuthorizationStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == info_type)
    }
}

/// One authorization push, handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The authorizer (the merchant's account).
    pub appid: String,
    /// The platform it authorized.
    pub component_appid: String,
    pub status: AuthorizationStatus,
    /// The permission sets granted (`funcscope_category.id`), when known: on `authorized`
    /// and `updateauthorized`; `None` on `unauthorized`.
    pub funcs: Option<Vec<u32>>,
    /// WeChat's `CreateTime` of the push (Unix seconds).
    pub event_time: i64,
}

/// The fields an authorization adds to its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizationFields {
    pub component_appid: String,
    pub funcs: Option<Vec<u32>>,
    pub event_time: i64,
}

impl Outcome {
    /// An authorization push's outcome (kind `authorization`); `appid` is the authorizer's.
    pub fn authorization(a: Authorization) -> Outcome {
        let mut o = Outcome::new(Status::Authorization(a.status), Some(a.appid), None);
        o.authorization = Some(Box::new(AuthorizationFields {
            component_appid: a.component_appid,
            funcs: a.funcs,
            event_time: a.event_time,
        }));
        o
    }

    /// `authorization:<component_appid>:<appid>:<event_time>:<status>`: what WeChat's retries
    /// of one push repeat, and a later authorization of the same merchant does not.
    pub(super) fn authorization_message_id(&self) -> String {
        let fields = self.authorization.as_deref();
        format!(
            "authorization:{}:{}:{}:{}",
            fields.map_or("-", |f| f.component_appid.as_str()),
            self.appid.as_deref().unwrap_or("-"),
            fields.map_or(0, |f| f.event_time),
            self.status.as_str(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Kind;

    fn authorized() -> Authorization {
        Authorization {
            appid: "wxmerchant".into(),
            component_appid: "wxplatform".into(),
            status: AuthorizationStatus::Authorized,
            funcs: Some(vec![1, 7]),
            event_time: 1_733_300_000,
        }
    }

    #[test]
    fn an_authorization_is_routed_by_its_info_type_and_names_both_appids() {
        let o = Outcome::authorization(authorized());
        assert_eq!(o.kind(), Kind::Authorization);
        assert_eq!(o.routing_key(), "authorization.authorized");
        let v: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
        assert_eq!(v["kind"], "authorization");
        assert_eq!(v["status"], "authorized");
        assert_eq!(v["appid"], "wxmerchant");
        assert_eq!(v["component_appid"], "wxplatform");
        assert_eq!(v["funcs"], serde_json::json!([1, 7]));
        assert_eq!(v["event_time"], 1_733_300_000);
        assert_eq!(v["touser"], serde_json::Value::Null);
        let gone = Outcome::authorization(Authorization {
            status: AuthorizationStatus::Unauthorized,
            funcs: None,
            ..authorized()
        });
        assert_eq!(gone.routing_key(), "authorization.unauthorized");
        let v: serde_json::Value = serde_json::from_slice(&gone.to_json()).unwrap();
        assert_eq!(v["funcs"], serde_json::Value::Null);
    }

    #[test]
    fn an_authorization_is_identified_by_platform_merchant_time_and_status() {
        let a = Outcome::authorization(authorized());
        assert_eq!(
            a.message_id(),
            "authorization:wxplatform:wxmerchant:1733300000:authorized"
        );
        assert_eq!(
            a.message_id(),
            Outcome::authorization(authorized()).message_id()
        );
        let later = Outcome::authorization(Authorization {
            event_time: 1_733_300_001,
            ..authorized()
        });
        assert_ne!(a.message_id(), later.message_id());
        for s in AuthorizationStatus::ALL {
            assert_eq!(AuthorizationStatus::from_info_type(s.as_str()), Some(s));
        }
        assert_eq!(
            AuthorizationStatus::from_info_type("component_verify_ticket"),
            None
        );
    }
}
