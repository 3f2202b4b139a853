//! The third-party platform's own WeChat endpoints (`/cgi-bin/component/...`).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::Secret;
use crate::wechat::{SendError, WechatClient};

/// The platform endpoints, which the simulator serves under the same paths.
pub const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
pub const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
pub const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
pub const AUTHORIZER_LIST: &str = "/cgi-bin/component/api_get_authorizer_list";

/// An answer of a component endpoint: its fields, or WeChat's error.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer<T> {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    #[serde(flatten)]
    pub body: Option<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ComponentToken {
    pub component_access_token: String,
    pub expires_in: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizerToken {
    pub authorizer_access_token: String,
    pub expires_in: u64,
    pub authorizer_refresh_token: String,
}

/// A permission set the merchant granted (`func_info[].funcscope_category.id`).
#[derive(Debug, Clone, Deserialize)]
pub struct FuncInfo {
    pub funcscope_category: FuncScope,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FuncScope {
    pub id: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationInfo {
    pub authorizer_appid: String,
    pub authorizer_access_token: String,
    pub expires_in: u64,
    pub authorizer_refresh_token: String,
    #[serde(default)]
    pub func_info: Vec<FuncInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueryAuth {
    pub authorization_info: AuthorizationInfo,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedAuthorizer {
    pub authorizer_appid: String,
    pub refresh_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizerList {
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub list: Vec<ListedAuthorizer>,
}

/// The platform's credentials and the HTTP client.
pub struct ComponentApi {
    pub client: WechatClient,
    pub appid: String,
    pub secret: Secret,
}

impl ComponentApi {
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> Result<Answer<T>, SendError> {
        let mut req = self
            .client
            .http()
            .post(format!("{}{path}", self.client.base()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.query(&[("component_access_token", t)]);
        }
        self.client.execute(req).await
    }

    /// `api_component_token`, with the last verify ticket WeChat pushed.
    pub async fn component_token(&self, ticket: &str) -> Result<Answer<ComponentToken>, SendError> {
        let body = serde_json::json!({
            "component_appid": self.appid,
            "component_appsecret": self.secret.expose(),
            "component_verify_ticket": ticket,
        });
        self.post(COMPONENT_TOKEN, None, body).await
    }

    /// `api_query_auth`: an authorization code exchanged for the authorizer's tokens.
    pub async fn query_auth(
        &self,
        component_token: &str,
        code: &str,
    ) -> Result<Answer<QueryAuth>, SendError> {
        let body = serde_json::json!({
            "component_appid": self.appid,
            "authorization_code": code,
        });
        self.post(QUERY_AUTH, Some(component_token), body).await
    }

    /// `api_authorizer_token`: a new authorizer token, and a rotated refresh token.
    pub async fn authorizer_token(
        &self,
        component_token: &str,
        authorizer: &str,
        refresh_token: &str,
    ) -> Result<Answer<AuthorizerToken>, SendError> {
        let body = serde_json::json!({
            "component_appid": self.appid,
            "authorizer_appid": authorizer,
            "authorizer_refresh_token": refresh_token,
        });
        self.post(AUTHORIZER_TOKEN, Some(component_token), body)
            .await
    }

    /// `api_get_authorizer_list`, one page.
    pub async fn authorizer_list(
        &self,
        component_token: &str,
        offset: u64,
    ) -> Result<Answer<AuthorizerList>, SendError> {
        let body = serde_json::json!({
            "component_appid": self.appid,
            "offset": offset,
            "count": 500,
        });
        self.post(AUTHORIZER_LIST, Some(component_token), body)
            .await
    }
}
