//! The sample job the demo and the benchmark publish.

/// A realistic template send, like the contract's sample: the demo's good jobs and every
/// benchmark job are this body with their own id and recipient.
pub fn job(id: &str, touser: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "touser": touser,
        "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
        "url": "http://weixin.qq.com/download",
        "topcolor": "#FF0000",
        "data": {
            "User": {"value": "黄先生", "color": "#173177"},
            "Money": {"value": "人民币260.00元", "color": "#173177"}
        }
    }))
    .expect("static JSON")
}
