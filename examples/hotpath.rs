//! The worker's own per-job CPU work, without any I/O, for instruction counts.
//!
//! Wall-clock timings on a shared two-core VM move by more than these parts are worth, so
//! they are compared by the instructions they execute (docs/BENCHMARKS.md, "Round two"):
//!
//! ```sh
//! cargo build --release --example hotpath
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/hotpath parse 10000
//! ```
//!
//! and the same with a count of 0; the difference divided by the count is the cost of one job.
//! The parts: `parse` (the bench's job body through `job::parse`), `outcome` (a `sent` outcome
//! as the dispatcher fills it in, then its routing key, JSON body and AMQP properties),
//! `headers` (what the worker reads from a first delivery's properties) and `send` (the job's
//! body sent with `WechatClient::send`, one at a time, to a minimal keep-alive HTTP/1.1 server
//! in the same process, whose share is the same for every build of the client).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use lapin::BasicProperties;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wxdispatch::amqp::{headers, publisher};
use wxdispatch::config::{Config, Secret};
use wxdispatch::job::{self, MsgType, Parsed};
use wxdispatch::outcome::{JobIdentity, Outcome, SendStatus};
use wxdispatch::wechat::WechatClient;

fn main() {
    let mut args = std::env::args().skip(1);
    let part = args.next().unwrap_or_else(|| "parse".into());
    let n: usize = args
        .next()
        .map_or(10_000, |s| s.parse().expect("a count of iterations"));
    let env: BTreeMap<String, String> = [("WXD_APPID", "wxbench0000000000"), ("WXD_SECRET", "s")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_sources(None, &env).expect("a valid configuration");
    // The bench's job body (`wxdispatch bench`, the contract's sample with two data fields).
    let body = wxdispatch::tools::sample::job("r1764614400-12345", "or1764614400user12345");
    let Ok(Parsed::Single(job)) = job::parse(&body, None, &config) else {
        panic!("the bench's job parses as a single job");
    };
    if part == "send" {
        return send(n, job.body);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for _ in 0..n {
        match part.as_str() {
            "parse" => {
                black_box(job::parse(black_box(&body), None, &config).is_ok());
            }
            "outcome" => {
                let about = JobIdentity {
                    id: Some(job.id.to_string()),
                    appid: Some(job.appid.clone()),
                    touser: Some(job.touser.clone()),
                    msg_type: Some(job.msg_type),
                };
                let mut o = Outcome::for_job(SendStatus::Sent, about);
                o.attempts = 1;
                o.errcode = Some(0);
                o.errmsg = Some("ok".to_string());
                o.msgid = Some(3_000_000_001);
                black_box((
                    o.routing_key(),
                    o.to_json(),
                    publisher::outcome_properties(&o),
                ));
            }
            "headers" => {
                let props = black_box(&props);
                black_box((headers::wait_left(props, 0), headers::retry_state(props)));
            }
            other => panic!("unknown part {other:?}: parse, outcome, headers or send"),
        }
    }
}

/// `n` template sends of `body` through the worker's HTTP client, one after the other.
fn send(n: usize, body: bytes::Bytes) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(serve(listener));
        let client = WechatClient::new(&base, Duration::from_secs(5));
        let token = Secret::new("T".repeat(136));
        for _ in 0..n {
            let reply = client
                .send(MsgType::Template, &token, body.clone())
                .await
                .expect("the server answers");
            assert_eq!(reply.errcode, 0);
        }
    });
}

/// Answers every request on every connection with WeChat's reply to a successful send.
async fn serve(listener: tokio::net::TcpListener) {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 45\r\n\r\n{\"errcode\":0,\"errmsg\":\"ok\",\"msgid\":300000001}";
    while let Ok((mut conn, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // A request is its head and `content-length` bytes of body.
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    let mut chunk = [0u8; 4096];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("a length"));
                while buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                buf.drain(..end + 4 + len);
                if conn.write_all(REPLY).await.is_err() {
                    return;
                }
            }
        });
    }
}
