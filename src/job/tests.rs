use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The sample body from the source document, verbatim (WeChat's send JSON, no id).
pub(crate) const SEED_SAMPLE: &str = r##"{
"touser":"OPENID",
"template_id":"ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
"url":"http://weixin.qq.com/download",
"topcolor":"#FF0000",
"data":{
"User": {
"value":"黄先生",
"color":"#173177"
},
"Date":{
"value":"06月07日 19时24分",
"color":"#173177"
},
"CardNumber":{
"value":"0426",
"color":"#173177"
},
"Type":{
"value":"消费",
"color":"#173177"
},
"Money":{
"value":"人民币260.00元",
"color":"#173177"
},
"DeadTime":{
"value":"06月07日19时24分",
"color":"#173177"
},
"Left":{
"value":"6504.09",
"color":"#173177"
}
}
}"##;

fn config() -> Config {
    let env: BTreeMap<String, String> = [("WXD_APPID", "wx0123456789abcdef"), ("WXD_SECRET", "s")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_sources(None, &env).unwrap()
}

fn reason(body: &[u8]) -> &'static str {
    parse(body, None, &config()).unwrap_err().0.reason
}

#[test]
fn the_seed_sample_is_accepted_verbatim_with_a_stable_digest_id() {
    let Parsed::Single(job) = parse(SEED_SAMPLE.as_bytes(), None, &config()).unwrap() else {
        panic!("expected a single job");
    };
    assert_eq!(job.touser, "OPENID");
    assert_eq!(job.appid, "wx0123456789abcdef");
    assert!(job.id.as_str().starts_with("sha1-") && job.id.as_str().len() <= MAX_ID_LEN);
    let again = match parse(SEED_SAMPLE.as_bytes(), None, &config()).unwrap() {
        Parsed::Single(j) => j.id,
        _ => unreachable!(),
    };
    assert_eq!(job.id, again, "same body, same id");
    let sent: Value = serde_json::from_slice(&job.body).unwrap();
    assert_eq!(sent["client_msg_id"], job.id.as_str());
    assert_eq!(sent["data"]["User"]["value"], "黄先生");
    assert!(sent.get("id").is_none() && sent.get("appid").is_none());
}

#[test]
fn message_id_property_is_the_fallback_id() {
    let Parsed::Single(job) = parse(SEED_SAMPLE.as_bytes(), Some("amqp-mid-1"), &config()).unwrap()
    else {
        panic!()
    };
    assert_eq!(job.id.as_str(), "amqp-mid-1");
}

#[test]
fn each_kind_of_bad_input_has_its_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"not json", "bad_json"),
        (&[0xff, 0xfe, b'{', b'}'], "bad_utf8"),
        (b"[1,2]", "not_object"),
        (br#"{"template_id":"t"}"#, "missing_touser"),
        (br#"{"touser":"o"}"#, "missing_template_id"),
        (br#"{"touser":5,"template_id":"t"}"#, "bad_touser"),
        (br#"{"touser":"o","template_id":7}"#, "bad_template_id"),
        (br#"{"id":12,"touser":"o","template_id":"t"}"#, "bad_id"),
        (
            br#"{"touser":"o","template_id":"t","appid":"wxnope"}"#,
            "unknown_account",
        ),
        (
            br#"{"touser":"o","template_id":"t","data":"x"}"#,
            "bad_field",
        ),
        (
            br#"{"touser":"o","template_id":"t","data":{"a":1}}"#,
            "bad_data",
        ),
        (
            br#"{"touser":"o","template_id":"t","not_after":"tomorrow"}"#,
            "bad_not_after",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(reason(body), *want, "{}", String::from_utf8_lossy(body));
    }
    let long = format!(
        r#"{{"id":"{}","touser":"o","template_id":"t"}}"#,
        "x".repeat(65)
    );
    assert_eq!(reason(long.as_bytes()), "bad_id");
    let big = vec![b' '; 1024 * 1024];
    assert_eq!(reason(&big), "too_large");
}

#[test]
fn invalid_jobs_keep_what_could_be_read() {
    let (e, known) = parse(
        br#"{"id":"j1","touser":"o1","template_id":5}"#,
        None,
        &config(),
    )
    .unwrap_err();
    assert_eq!(e.reason, "bad_template_id");
    assert_eq!(known.id.as_deref(), Some("j1"));
    assert_eq!(known.touser.as_deref(), Some("o1"));
    let (_, known) = parse(b"garbage", None, &config()).unwrap_err();
    assert!(
        known.id.unwrap().starts_with("sha1-"),
        "unreadable jobs get the digest id"
    );
}

#[test]
fn an_array_of_recipients_is_a_batch_with_one_body_per_recipient() {
    let body = br#"{"id":"b1","touser":["o1","o2"],"template_id":"t","data":{}}"#;
    let Parsed::Batch(b) = parse(body, None, &config()).unwrap() else {
        panic!()
    };
    assert_eq!(b.recipients, vec!["o1", "o2"]);
    let one = b.job_for("o2");
    let Parsed::Single(j) = parse(&one, None, &config()).unwrap() else {
        panic!()
    };
    assert_eq!((j.id.as_str(), j.touser.as_str()), ("b1", "o2"));
}

/// A recipient's job is the batch minus the list, plus its own `touser`: every other field
/// (data, url, not_after, unknown ones) comes through unchanged, and openids that need
/// escaping stay valid JSON.
#[test]
fn each_recipient_job_carries_the_whole_batch_and_its_own_openid() {
    let body = br##"{"id":"b2","touser":["o\"1","o\u00e92"],"template_id":"t","url":"https://x","not_after":"2099-01-01T00:00:00Z","data":{"k":{"value":"v","color":"#173177"}},"extra":[1,2]}"##;
    let Parsed::Batch(b) = parse(body, None, &config()).unwrap() else {
        panic!()
    };
    for r in &b.recipients {
        let v: Value = serde_json::from_slice(&b.job_for(r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "b2", "appid": "wx0123456789abcdef", "touser": r,
                "template_id": "t", "url": "https://x",
                "not_after": "2099-01-01T00:00:00+00:00",
                "data": {"k": {"value": "v", "color": "#173177"}}, "extra": [1, 2],
            })
        );
    }
    assert_eq!(b.recipients, ["o\"1", "oé2"]);
}

/// Found by fuzzing: a batch without id or appid just under the size limit expanded into
/// recipient jobs over it (the `id` and `appid` are added back), each then invalid.
#[test]
fn a_batch_whose_recipient_jobs_would_be_too_large_is_refused_whole() {
    let env: BTreeMap<String, String> = [
        ("WXD_APPID", "wx0123456789abcdef"),
        ("WXD_SECRET", "s"),
        ("WXD_MAX_JOB_BYTES", "2048"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_sources(None, &env).unwrap();
    let batch = |pad: usize| {
        format!(
            r#"{{"touser":["a","b"],"template_id":"t","x":"{}"}}"#,
            "x".repeat(pad)
        )
    };
    let (e, _) = parse(batch(2000).as_bytes(), None, &config).unwrap_err();
    assert_eq!(e.reason, "too_large");
    let Parsed::Batch(b) = parse(batch(1900).as_bytes(), None, &config).unwrap() else {
        panic!("expected a batch")
    };
    assert!(parse(&b.job_for("a"), None, &config).is_ok());
}

#[test]
fn unknown_fields_pass_through_to_wechat() {
    let body = br#"{"id":"j","touser":"o","template_id":"t","future_field":{"x":1}}"#;
    let Parsed::Single(j) = parse(body, None, &config()).unwrap() else {
        panic!()
    };
    let sent: Value = serde_json::from_slice(&j.body).unwrap();
    assert_eq!(sent["future_field"]["x"], 1);
}

/// A subscription job's body is WeChat's own request: no `client_msg_id` (the endpoints take
/// none), no `type`; a batch's recipient jobs keep their type when they come back.
#[test]
fn a_subscription_body_has_no_client_msg_id_and_a_batch_keeps_its_type() {
    let body = br#"{"id":"s","type":"miniprogram_subscribe","touser":["o1","o2"],"template_id":"t","lang":"en_US","data":{"thing1":{"value":"v"}}}"#;
    let Parsed::Batch(b) = parse(body, None, &config()).unwrap() else {
        panic!()
    };
    let Parsed::Single(j) = parse(&b.job_for("o2"), None, &config()).unwrap() else {
        panic!()
    };
    assert_eq!(j.msg_type, MsgType::MiniprogramSubscribe);
    let sent: Value = serde_json::from_slice(&j.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"touser": "o2", "template_id": "t", "lang": "en_US",
                "data": {"thing1": {"value": "v"}}})
    );
    let Parsed::Single(t) = parse(SEED_SAMPLE.as_bytes(), None, &config()).unwrap() else {
        panic!()
    };
    assert_eq!(t.msg_type, MsgType::Template, "template is the default");
}

/// WeChat's documented value limits, by the key's kind prefix; kinds without a checked
/// limit (time, date, unknown ones) pass.
#[test]
fn subscription_values_are_checked_against_their_kind() {
    assert!(value_limit("thing1", &"字".repeat(20)).is_none());
    assert!(value_limit("thing1", &"字".repeat(21)).is_some());
    assert!(value_limit("character_string12", &"a".repeat(33)).is_some());
    assert!(value_limit("phrase2", "配送中").is_none());
    assert!(value_limit("phrase2", "正在配送途中").is_some());
    assert!(value_limit("name3", &"a".repeat(20)).is_none());
    assert!(value_limit("name3", &"张".repeat(11)).is_some());
    assert!(value_limit("time4", &"9".repeat(100)).is_none());
    assert!(
        value_limit("thing1", "").is_some(),
        "WeChat refuses empty values"
    );
}

#[test]
fn each_type_needs_the_permission_sets_configured_for_it() {
    use crate::policy::permission::PermissionSets;
    let sets = PermissionSets {
        template: vec![7],
        subscribe: vec![89],
        miniprogram_subscribe: vec![18, 89],
    };
    assert_eq!(MsgType::Template.needed_sets(&sets), [7]);
    assert_eq!(MsgType::Subscribe.needed_sets(&sets), [89]);
    assert_eq!(MsgType::MiniprogramSubscribe.needed_sets(&sets), [18, 89]);
}
