//! RabbitMQ plumbing: connections, the topology wxdispatch declares, and a publisher that
//! always waits for the broker's confirm.

pub(crate) mod acks;
pub mod headers;
pub mod publisher;
pub mod topology;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use rand::seq::SliceRandom;

use crate::config::broker_urls;

pub use acks::Acks;
pub use publisher::{PublishError, Publisher};

/// How long one broker address may take to accept a connection before the next is tried: a
/// node that is down refuses at once, but one cut off by the network would hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest frame the worker offers the broker, unless the URL sets `frame_max`. lapin keeps
/// 32 frames of read and of write buffer per connection, so the broker's own maximum (128 KiB
/// and up) would cost 8 MiB or more per connection for messages of a few KiB; a larger body
/// still goes, in several frames.
const FRAME_MAX: u32 = 32 * 1024;

/// The user the worker connects as (the first broker URL's; a cluster's nodes share their
/// users): the `user_id` the broker lets it stamp on what it publishes.
pub(crate) fn connection_user(urls: &str) -> String {
    broker_urls(urls)
        .first()
        .and_then(|u| u.parse::<lapin::uri::AMQPUri>().ok())
        .map_or_else(|| "guest".to_string(), |u| u.authority.userinfo.username)
}

/// Opens a named connection, so operators can tell the worker's connections apart in the
/// management UI (and tests can close one by name).
///
/// `urls` may name several nodes of a cluster, comma-separated. They are tried in a random
/// order, so replicas (and each process' publisher and consumer connections) spread over the
/// nodes, and the first that accepts wins. After a connection is lost, the caller's
/// reconnect (with its backoff) calls this again and so lands on a node that is still up.
pub async fn connect(urls: &str, name: &str) -> lapin::Result<Connection> {
    let mut list = broker_urls(urls);
    list.shuffle(&mut rand::rng());
    connect_first(&list, name).await
}

/// Tries `urls` in the order given, every one of them if need be; the first that accepts wins,
/// else the last error is returned.
async fn connect_first(urls: &[&str], name: &str) -> lapin::Result<Connection> {
    let mut last = None;
    for &url in urls {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let mut uri: lapin::uri::AMQPUri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                tracing::warn!(broker = %crate::config::redact_url(url), error = %e, "broker URL does not parse; trying the next");
                last = Some(std::io::Error::new(std::io::ErrorKind::InvalidInput, e).into());
                continue;
            }
        };
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => {
                tracing::warn!(broker = %crate::config::redact_url(url), error = %e, "broker node unreachable; trying the next");
                last = Some(e);
            }
            Err(_) => {
                tracing::warn!(broker = %crate::config::redact_url(url), "broker node did not answer in {CONNECT_TIMEOUT:?}; trying the next");
                last = Some(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into(),
                );
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no broker URL configured").into()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_split_and_every_password_redacted() {
        let urls = "amqp://u:p1@n1:5672/%2f, amqp://u:p2@n2:5672/%2f,,amqp://n3";
        assert_eq!(
            broker_urls(urls),
            [
                "amqp://u:p1@n1:5672/%2f",
                "amqp://u:p2@n2:5672/%2f",
                "amqp://n3"
            ]
        );
        let r = crate::config::redact_url(urls);
        assert!(!r.contains("p1") && !r.contains("p2"), "{r}");
        assert_eq!(
            r,
            "amqp://u:***@n1:5672/%2f,amqp://u:***@n2:5672/%2f,amqp://n3"
        );
    }

    const DEAD: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
    /// The machine's broker (scripts/services.sh starts it).
    const LIVE: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// A list of dead nodes fails with the last error; an empty one fails too.
    #[tokio::test]
    async fn connect_fails_when_no_node_is_reachable() {
        let err = connect(&format!("{DEAD},{DEAD}"), "wxdispatch-test-dead").await;
        assert!(err.is_err());
        assert!(connect("", "wxdispatch-test-none").await.is_err());
    }

    /// The worker offers the broker frames of at most [`FRAME_MAX`] (lapin's buffers are 32
    /// frames), unless the URL says otherwise; a URL that does not parse is skipped like a dead
    /// node.
    #[tokio::test]
    async fn frames_are_small_unless_the_url_says_otherwise() {
        let conn = connect_first(&["not a url", LIVE], "wxdispatch-test-frames")
            .await
            .unwrap();
        assert_eq!(conn.configuration().frame_max(), FRAME_MAX);
        let _ = conn.close(200, "done".into()).await;
        let conn = connect(&format!("{LIVE}?frame_max=65536"), "wxdispatch-test-frames")
            .await
            .unwrap();
        assert_eq!(conn.configuration().frame_max(), 65536);
        let _ = conn.close(200, "done".into()).await;
    }

    /// Failover over `dead,dead,live` reaches the live node every time: in that fixed order
    /// (the dead ones refuse at once and are skipped), and through `connect`'s shuffle, whose
    /// order changes from try to try but still ends on the live node.
    #[tokio::test]
    async fn connect_skips_unreachable_nodes() {
        for i in 0..20 {
            let conn = connect_first(&[DEAD, DEAD, LIVE], "wxdispatch-test-failover")
                .await
                .unwrap_or_else(|e| panic!("try {i}: dead,dead,live did not connect: {e}"));
            assert!(conn.status().connected(), "try {i}");
            let _ = conn.close(200, "done".into()).await;
        }
        let list = format!("{DEAD},{DEAD},{LIVE}");
        for i in 0..20 {
            let conn = connect(&list, "wxdispatch-test-failover")
                .await
                .unwrap_or_else(|e| panic!("shuffled try {i}: did not connect: {e}"));
            assert!(conn.status().connected(), "shuffled try {i}");
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
