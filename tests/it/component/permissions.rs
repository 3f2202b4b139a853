//! Component mode: the permission sets an authorizer granted decide, before any send, whether
//! a job's type can be sent for it (`permission_not_granted`); and the template catalogues
//! (the `templates` command, the catalogue check) work with an authorizer's token.

use std::time::Duration;

use serde_json::json;
use wxdispatch::job::MsgType;
use wxdispatch::tools::mock::Behaviour;

use super::outcomes::{
    platform_config, platform_harness, platform_without_worker, push_authorization, push_ticket,
    route_url,
};
use super::*;

/// An OA subscription notification (`bizsend`) for `touser`.
fn subscribe_job(id: &str, appid: &str, touser: &str) -> serde_json::Value {
    json!({
        "id": id, "appid": appid, "type": "subscribe", "touser": touser,
        "template_id": "SUBTPL0001",
        "data": {"thing1": {"value": "订单已发货"}, "time2": {"value": "2026-12-01 10:00"}}
    })
}

/// A merchant that granted the platform only the template set (7) gets its subscription
/// notifications `rejected`, `permission_not_granted`, before any send (the simulator sees
/// none, nor a catalogue fetch for them, a batch's recipients included), while its template
/// messages are sent; once an `updateauthorized` push (to this
/// worker's route) grants the subscription set (89), its next subscription job is sent.
///
/// Fails on the code before the permission check: the subscription jobs were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_whose_permission_set_was_not_granted_is_rejected_until_it_is() {
    let (h, platform) = platform_harness(|_| {}).await;
    let url = route_url(&h);
    push_ticket(&h, &platform, &url).await;
    let merchant = unique("wxperm").replace('.', "");
    push_authorization(&h, &platform, &url, "authorized", &merchant, &[7]).await;

    let mut all = jobs_for("perm-tpl", &merchant, 2);
    all.push(subscribe_job("perm-sub-1", &merchant, "perm-u1"));
    all.push(subscribe_job("perm-sub-2", &merchant, "perm-u2"));
    let mut batch = subscribe_job("perm-sub-batch", &merchant, "-");
    batch["touser"] = json!(["perm-b1", "perm-b2"]);
    all.push(batch);
    h.publish_many(&all).await;
    let out = h.outcomes(7, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 7, "{:?}", by_status(&out));
    for o in out.iter().filter(|o| o["kind"] == "send") {
        if o["type"] == "subscribe" {
            assert_eq!(o["status"], "rejected", "{o}");
            assert_eq!(o["reason"], "permission_not_granted", "{o}");
            assert_eq!(o["attempts"], 0, "never sent: {o}");
            assert!(o["errmsg"].as_str().unwrap().contains("89"), "{o}");
        } else {
            assert_eq!(o["status"], "sent", "{o}");
        }
    }
    let sent = |h: &Harness, t: &str| {
        let stats = h.mock.state.stats();
        stats.requests_by_type.get(t).copied().unwrap_or(0)
    };
    assert_eq!(
        sent(&h, "subscribe"),
        0,
        "no subscription send reached WeChat"
    );
    assert_eq!(sent(&h, "template"), 2);
    assert_eq!(
        h.mock.state.stats().catalogue_calls,
        1,
        "the template catalogue only: no subscription job got as far as its catalogue check"
    );

    push_authorization(&h, &platform, &url, "updateauthorized", &merchant, &[7, 89]).await;
    // Grants that refuse are trusted this long after they were read (one read per burst).
    tokio::time::sleep(wxdispatch::policy::permission::REFUSE_ON).await;
    h.publish(&subscribe_job("perm-sub-3", &merchant, "perm-u3"))
        .await;
    let out = h.outcomes(2, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 2, "{:?}", by_status(&out));
    for o in &out {
        match o["kind"].as_str() {
            Some("authorization") => {
                assert_eq!(o["status"], "updateauthorized", "{o}");
                assert_eq!(o["funcs"], json!([7, 89]), "{o}");
            }
            _ => assert_eq!(o["status"], "sent", "{o}"),
        }
    }
    assert_eq!(sent(&h, "subscribe"), 1);
    h.cleanup().await;
}

/// The simulator's catalogues: the sample job's template (keys `User`, `Money`) and one
/// subscription template.
fn with_catalogue() -> Behaviour {
    Behaviour {
        private_templates: Some(vec![(
            "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY".into(),
            "{{User.DATA}} 消费 {{Money.DATA}}".into(),
        )]),
        subscription_templates: Some(vec![(
            "SUBTPL0001".into(),
            "物品：{{thing1.DATA}}\n时间：{{time2.DATA}}".into(),
        )]),
        ..Default::default()
    }
}

/// An authorizer with no `[[accounts]]` entry can be named to `templates`: both catalogues
/// are listed, fetched with its own token. Its jobs go through the catalogue check like a
/// configured account's: an unknown `template_id` is `rejected`, `unknown_template`, and
/// never sent, a matching job is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizers_templates_are_listed_and_checked_like_a_configured_accounts() {
    let (mut h, platform) = platform_without_worker(Opts {
        behaviour: with_catalogue(),
        ..Default::default()
    })
    .await;
    let c = replica(&h.mock, &platform).await;
    let merchant = unique("wxcat").replace('.', "");
    authorized(&h.mock, &c, &platform, &merchant, &[7, 89]).await;
    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = platform_config(&h, &platform, &exchange);

    let listed = wxdispatch::app::catalogues(&h.config, Some(&merchant))
        .await
        .expect("an authorizer can be named");
    assert_eq!(listed.len(), 2);
    for l in &listed {
        assert_eq!(l.appid, merchant);
        let list = l.templates.as_ref().expect("fetched");
        let (id, keys) = match l.msg_type {
            MsgType::Template => (
                "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
                ["User", "Money"],
            ),
            _ => ("SUBTPL0001", ["thing1", "time2"]),
        };
        assert_eq!(list.len(), 1, "{}", l.msg_type);
        assert_eq!(list[0].template_id, id);
        assert_eq!(list[0].keys, keys);
    }
    let by_appid = h.mock.state.stats().catalogue_calls_by_appid;
    assert_eq!(by_appid.get(&merchant), Some(&2), "its token: {by_appid:?}");

    h.start_worker().await;
    let mut good = job("cat-good", "cat-u1");
    good["appid"] = json!(merchant);
    good["data"]["Money"] = json!({"value": "260.00"});
    let mut unknown = good.clone();
    unknown["id"] = json!("cat-unknown");
    unknown["template_id"] = json!("NOSUCHTEMPLATE");
    h.publish_many(&[good, unknown]).await;
    let out = h.outcomes(2, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 2, "{:?}", by_status(&out));
    let by_id = |id: &str| out.iter().find(|o| o["id"] == id).unwrap().clone();
    assert_eq!(by_id("cat-good")["status"], "sent");
    let o = by_id("cat-unknown");
    assert_eq!(o["status"], "rejected", "{o}");
    assert_eq!(o["reason"], "unknown_template", "{o}");
    assert_eq!(o["attempts"], 0, "never sent: {o}");
    assert_eq!(h.mock.state.stats().send_requests, 1);
    h.cleanup().await;
}

/// Each type's sets are a setting: WeChat's ids by default, a comma-separated list from the
/// environment (any one will do), empty for no check, and anything else refused by name.
#[test]
fn the_permission_sets_of_each_type_are_settings_with_wechats_ids_by_default() {
    use std::collections::BTreeMap;
    use wxdispatch::config::Config;

    let load = |extra: &[(&str, &str)]| {
        let mut vars: BTreeMap<String, String> = [("WXD_APPID", "wxauthorizer01")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert("WXD_SECRET".into(), "s".into());
        Config::from_sources(None, &vars).map(|c| c.wechat.component_permissions)
    };
    let defaults = load(&[]).unwrap();
    assert_eq!(
        (
            defaults.template,
            defaults.subscribe,
            defaults.miniprogram_subscribe
        ),
        (vec![7], vec![89], vec![18])
    );
    let set = load(&[
        ("WXD_COMPONENT_PERMISSIONS_MINIPROGRAM_SUBSCRIBE", "18, 89"),
        ("WXD_COMPONENT_PERMISSIONS_SUBSCRIBE", ""),
    ])
    .unwrap();
    assert_eq!(set.miniprogram_subscribe, vec![18, 89]);
    assert!(set.subscribe.is_empty(), "no check");
    let err = load(&[("WXD_COMPONENT_PERMISSIONS_TEMPLATE", "seven")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("WXD_COMPONENT_PERMISSIONS_TEMPLATE"),
        "{err}"
    );
}

/// A merchant revokes a permission set and the `updateauthorized` push reaches another replica:
/// this worker's cached grants still allow template messages, so it sends, and WeChat answers
/// 48001. The worker reads the grants again: the job ends `rejected`,
/// `permission_not_granted` (one attempt), and the account is not stopped: a subscription
/// notification (still granted) published after it is sent at once, and the next template
/// message ends before any send.
///
/// Fails on the code before: the 48001 stopped the account, so the subscription notification
/// waited for the stop's probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_revoked_on_another_replica_ends_its_jobs_and_leaves_the_account_sending() {
    let (h, platform) = platform_harness(|_| {}).await;
    let url = route_url(&h);
    push_ticket(&h, &platform, &url).await;
    let merchant = unique("wxrevk").replace('.', "");
    push_authorization(&h, &platform, &url, "authorized", &merchant, &[7, 89]).await;
    h.publish_many(&jobs_for("rv-before", &merchant, 1)).await;
    let out = h.outcomes(2, Duration::from_secs(20)).await;
    let sent = |out: &[serde_json::Value], id: &str| {
        out.iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("no outcome for {id}: {:?}", by_status(out)))
            .clone()
    };
    assert_eq!(sent(&out, "rv-before-0")["status"], "sent");

    // Another replica receives the push that takes set 7 away, and stores it in Redis.
    let other = replica(&h.mock, &platform).await;
    let code = h.mock.state.component_authorize(&merchant, &[89]);
    let (q, body) = push(
        &platform,
        &auth_xml(&platform, "updateauthorized", &merchant, &code),
    );
    receive(&other, &q, &body).await.expect("stored");

    h.publish_many(&jobs_for("rv-after", &merchant, 1)).await;
    let first = h.outcomes(1, Duration::from_secs(10)).await;
    let o = sent(&first, "rv-after-0");
    assert_eq!(o["status"], "rejected", "{o}");
    assert_eq!(o["reason"], "permission_not_granted", "{o}");
    assert_eq!(o["attempts"], 1, "sent once, answered 48001: {o}");
    assert!(o["errmsg"].as_str().unwrap().contains("set 7"), "{o}");
    h.publish(&subscribe_job("rv-sub", &merchant, "rv-u1"))
        .await;
    h.publish_many(&jobs_for("rv-later", &merchant, 1)).await;
    let out = h.outcomes(2, Duration::from_secs(5)).await;
    assert_eq!(out.len(), 2, "{:?}", by_status(&out));
    assert_eq!(
        sent(&out, "rv-sub")["status"],
        "sent",
        "the account still sends"
    );
    let later = sent(&out, "rv-later-0");
    assert_eq!(later["reason"], "permission_not_granted", "{later}");
    assert_eq!(later["attempts"], 0, "never sent: {later}");
    h.cleanup().await;
}
