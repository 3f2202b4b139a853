//! The two template catalogues (`get_all_private_template`, `wxaapi/newtmpl/gettemplate`),
//! each in its endpoint's own reply shape, and the sample catalogues of `--catalogue`.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;

use super::faults::fault_reply;
use super::state::MockState;
use super::token::{AccessQuery, check_token};
use super::{Shared, wx, wx_err};

/// The two catalogue endpoints.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/cgi-bin/template/get_all_private_template",
            get(private_templates),
        )
        .route("/wxaapi/newtmpl/gettemplate", get(subscription_templates))
}

/// The seed document's template, for `--catalogue`.
pub fn sample_private_templates() -> Vec<(String, String)> {
    vec![(
        "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY".into(),
        "{{User.DATA}}\n卡号：{{CardNumber.DATA}}\n{{Type.DATA}}：{{Money.DATA}}\n时间：{{Date.DATA}}\n余额：{{Left.DATA}}".into(),
    )]
}

/// Two subscription templates, for `--catalogue`.
pub fn sample_subscription_templates() -> Vec<(String, String)> {
    vec![
        (
            "SUBTPL".into(),
            "物品：{{thing1.DATA}}\n时间：{{time2.DATA}}".into(),
        ),
        (
            "MPTPL".into(),
            "单号：{{number01.DATA}}\n状态：{{phrase3.DATA}}".into(),
        ),
    ]
}

async fn private_templates(State(s): State<Shared>, Query(q): Query<AccessQuery>) -> Response {
    catalogue(&s, q, false).await
}

async fn subscription_templates(State(s): State<Shared>, Query(q): Query<AccessQuery>) -> Response {
    catalogue(&s, q, true).await
}

/// Either catalogue, in its endpoint's own reply shape, with the outage fault applied.
async fn catalogue(s: &MockState, q: AccessQuery, subscription: bool) -> Response {
    s.stats.lock().unwrap().catalogue_calls += 1;
    let behaviour = s.behaviour.read().unwrap().clone();
    if let Some(kind) = behaviour.outage {
        return fault_reply(s, kind, behaviour.stall_ms).await;
    }
    match check_token(s, q.access_token.as_deref()) {
        Ok(appid) => {
            let mut stats = s.stats.lock().unwrap();
            *stats.catalogue_calls_by_appid.entry(appid).or_default() += 1;
        }
        Err((code, msg)) => return wx_err(code, msg),
    }
    let list = if subscription {
        behaviour.subscription_templates
    } else {
        behaviour.private_templates
    };
    let Some(list) = list else {
        return wx_err(48001, "api unauthorized");
    };
    if subscription {
        let data: Vec<_> = list
            .iter()
            .map(|(id, content)| serde_json::json!({"priTmplId": id, "title": id, "content": content, "example": "", "type": 2}))
            .collect();
        wx(serde_json::json!({"errcode": 0, "errmsg": "ok", "data": data}))
    } else {
        let data: Vec<_> = list
            .iter()
            .map(|(id, content)| serde_json::json!({"template_id": id, "title": id, "content": content, "example": ""}))
            .collect();
        wx(serde_json::json!({"template_list": data}))
    }
}
