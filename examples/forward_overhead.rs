//! What forwarding through wxdispatch adds to a push's reply (issue 26: under 5 ms at the 99th
//! percentile against a local server), docs/BENCHMARKS.md:
//!
//! ```sh
//! cargo run --release --example forward_overhead -- 3000
//! ```
//!
//! A local "existing server" checks WeChat's signature (and, in safe mode, the message
//! signature and the decryption, as a real account server must) and answers a passive reply.
//! The same signed user text is sent to it directly and through wxdispatch's callback
//! (`Endpoint` with `callback_forward_url`, served on its own port; a text message publishes
//! nothing, so no broker is needed), alternating one by one so both paths see the same machine
//! load, one request at a time over kept-alive connections. It prints p50, p99 and max of each
//! path and their difference, in plaintext and safe mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Query;
use wxdispatch::callback::http::Endpoint;
use wxdispatch::callback::{self, Inbound};
use wxdispatch::config::Config;
use wxdispatch::crypto::{self, AesKey, signature};
use wxdispatch::metrics::Metrics;
use wxdispatch::tools::mock::xml::seal_safe_mode;

const TOKEN: &str = "bench-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wxbench000000001";

type Params = std::collections::HashMap<String, String>;

/// The account's server: verify, (decrypt,) answer a short text reply.
async fn existing(Query(q): Query<Params>, body: String) -> (axum::http::StatusCode, String) {
    let get = |n: &str| q.get(n).map(String::as_str).unwrap_or("");
    if !signature::verify_url_signature(get("signature"), TOKEN, get("timestamp"), get("nonce")) {
        return (axum::http::StatusCode::FORBIDDEN, String::new());
    }
    let xml = if get("encrypt_type") == "aes" {
        let Ok(Inbound::Encrypted { encrypt, .. }) = callback::parse(&body) else {
            return (axum::http::StatusCode::BAD_REQUEST, String::new());
        };
        let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
        let ok = signature::verify_msg_signature(
            get("msg_signature"),
            TOKEN,
            get("timestamp"),
            get("nonce"),
            &encrypt,
        );
        match crypto::decrypt(&key, &encrypt) {
            Ok(d) if ok => d.xml,
            _ => return (axum::http::StatusCode::FORBIDDEN, String::new()),
        }
    } else {
        body
    };
    let reply = format!(
        "<xml><ToUserName><![CDATA[o]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{}]]></Content></xml>",
        xml.len()
    );
    (axum::http::StatusCode::OK, reply)
}

async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

fn push(safe: bool) -> (String, String) {
    let ts = chrono::Utc::now().timestamp().to_string();
    let nonce = rand::random::<u32>().to_string();
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_b]]></ToUserName><FromUserName><![CDATA[obench]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>{}</MsgId></xml>",
        rand::random::<u32>()
    );
    let mut query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=obench",
        signature::url_signature(TOKEN, &ts, &nonce)
    );
    if !safe {
        return (query, xml);
    }
    let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    let sealed = seal_safe_mode(TOKEN, &key, APPID, "gh_b", &xml, &ts, &nonce);
    query.push_str(&format!(
        "&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    ));
    (query, sealed.body)
}

async fn once(http: &reqwest::Client, url: &str, safe: bool) -> Duration {
    let (query, body) = push(safe);
    let started = Instant::now();
    let r = http
        .post(format!("{url}?{query}"))
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let text = r.bytes().await.unwrap();
    let took = started.elapsed();
    assert!(
        !text.is_empty() && &text[..] != b"success",
        "a forwarded reply"
    );
    took
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a count"))
        .unwrap_or(3000);
    let old = serve(axum::Router::new().route("/wx", axum::routing::post(existing))).await + "/wx";
    let env = BTreeMap::from(
        [
            ("WXD_APPID", APPID),
            ("WXD_SECRET", "unused"),
            ("WXD_CALLBACK_TOKEN", TOKEN),
            ("WXD_CALLBACK_AES_KEY", AES_KEY),
            ("WXD_CALLBACK_FORWARD_URL", old.as_str()),
            ("WXD_LOG_FORMAT", "text"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let config = Config::from_sources(None, &env).expect("config");
    let endpoint = Endpoint::from_config(&config, Arc::new(Metrics::new()))
        .expect("endpoint")
        .expect("a callback token is set");
    let via = serve(endpoint.router()).await + &config.callback.path;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    println!("{n} pushes per path and mode, one at a time, alternating; milliseconds");
    println!("mode       path      p50     p99     max");
    for safe in [false, true] {
        for _ in 0..200 {
            once(&http, &old, safe).await;
            once(&http, &via, safe).await;
        }
        let (mut direct, mut through) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            direct.push(once(&http, &old, safe).await);
            through.push(once(&http, &via, safe).await);
        }
        direct.sort();
        through.sort();
        let mode = if safe { "safe" } else { "plaintext" };
        for (path, v) in [("direct", &direct), ("through", &through)] {
            println!(
                "{mode:<10} {path:<8} {:>6.3}  {:>6.3}  {:>6.3}",
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
        println!(
            "{mode:<10} added    {:>6.3}  {:>6.3}",
            pct(&through, 0.5) - pct(&direct, 0.5),
            pct(&through, 0.99) - pct(&direct, 0.99)
        );
    }
}
