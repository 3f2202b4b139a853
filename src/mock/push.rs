//! The simulator's delivery-receipt pushes: after a successful send, POST a
//! TEMPLATESENDJOBFINISH event to the worker's callback URL, in plaintext or AES safe mode,
//! signed the way WeChat signs it.

use std::sync::Arc;
use std::time::Duration;

use crate::callback::{self, AesKey};
use crate::mock::MockState;

/// Where and how to push receipts.
#[derive(Clone, Debug)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
    /// Safe mode when set.
    pub aes_key: Option<AesKey>,
    /// How long after the send to push, like WeChat's delivery delay.
    pub delay_ms: u64,
}

/// Status to report: `success` unless the openid asks otherwise (`block` or `sysfail` in the
/// openid give `failed:user block` / `failed: system failed`).
fn status_for(touser: &str) -> &'static str {
    if touser.contains("block") {
        "failed:user block"
    } else if touser.contains("sysfail") {
        "failed: system failed"
    } else {
        "success"
    }
}

/// Pushes one receipt in the background, retrying like WeChat (3 tries) until answered
/// `success`.
pub fn spawn_receipt(
    state: Arc<MockState>,
    target: PushTarget,
    appid: String,
    touser: String,
    msgid: i64,
) {
    tokio::spawn(async move {
        if target.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(target.delay_ms)).await;
        }
        let now = chrono::Utc::now().timestamp();
        let event = callback::Event {
            to_user: format!("gh_{appid}"),
            from_user: touser.clone(),
            create_time: now,
            msg_type: "event".into(),
            event: callback::event::TEMPLATE_SEND_JOB_FINISH.into(),
            msg_id: Some(msgid),
            status: Some(status_for(&touser).into()),
        };
        let xml = event.to_xml();
        let timestamp = now.to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let (body, query) = match &target.aes_key {
            Some(key) => {
                let sealed = callback::seal_safe_mode(
                    &target.token,
                    key,
                    &appid,
                    &event.to_user,
                    &xml,
                    &timestamp,
                    &nonce,
                );
                let sig = callback::signature::url_signature(&target.token, &timestamp, &nonce);
                (
                    sealed.body,
                    vec![
                        ("signature", sig),
                        ("timestamp", timestamp.clone()),
                        ("nonce", nonce.clone()),
                        ("encrypt_type", "aes".to_string()),
                        ("msg_signature", sealed.msg_signature),
                    ],
                )
            }
            None => {
                let sig = callback::signature::url_signature(&target.token, &timestamp, &nonce);
                (
                    xml,
                    vec![
                        ("signature", sig),
                        ("timestamp", timestamp.clone()),
                        ("nonce", nonce.clone()),
                    ],
                )
            }
        };
        state.stats.lock().unwrap().receipts_pushed += 1;
        for attempt in 0..3u64 {
            let resp = state
                .http
                .post(&target.url)
                .query(&query)
                .header("content-type", "text/xml")
                .body(body.clone())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = resp
                && r.status().is_success()
                && r.text()
                    .await
                    .is_ok_and(|t| t.trim() == "success" || t.is_empty())
            {
                state.stats.lock().unwrap().receipts_acknowledged += 1;
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
        }
    });
}
