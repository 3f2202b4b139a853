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
//! as the dispatcher fills it in, then its routing key, JSON body and AMQP properties) and
//! `headers` (what the worker reads from a first delivery's properties).

use std::collections::BTreeMap;
use std::hint::black_box;

use lapin::BasicProperties;
use wxdispatch::amqp::{headers, publisher};
use wxdispatch::config::Config;
use wxdispatch::job::{self, Parsed};
use wxdispatch::outcome::{Outcome, SendStatus};

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
    let body = serde_json::to_vec(&serde_json::json!({
        "id": "r1764614400-12345",
        "touser": "or1764614400user12345",
        "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
        "url": "http://weixin.qq.com/download",
        "topcolor": "#FF0000",
        "data": {
            "User": {"value": "黄先生", "color": "#173177"},
            "Money": {"value": "人民币260.00元", "color": "#173177"}
        }
    }))
    .expect("static JSON");
    let Ok(Parsed::Single(job)) = job::parse(&body, None, &config) else {
        panic!("the bench's job parses as a single job");
    };
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for _ in 0..n {
        match part.as_str() {
            "parse" => {
                black_box(job::parse(black_box(&body), None, &config).is_ok());
            }
            "outcome" => {
                let mut o = Outcome::send(
                    SendStatus::Sent,
                    Some(job.id.to_string()),
                    Some(job.appid.clone()),
                    Some(job.touser.clone()),
                );
                o.msg_type = Some(job.msg_type);
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
            other => panic!("unknown part {other:?}: parse, outcome or headers"),
        }
    }
}
