//! The callback's own publisher: a confirm-mode channel on a connection opened on first use
//! and reopened after a loss, apart from the worker's, so receipts are stored while the worker
//! drains or reconnects.

use std::sync::Arc;
use std::time::Duration;

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::outcome::Outcome;

/// Opening the connection gets this long, so a broker that accepts TCP but never finishes the
/// handshake cannot hold the connection (and every receipt behind it).
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// One publish (connect and confirm) gets this long in its own task. Longer than the answer's
/// bound on purpose: a broker blocked for a few seconds still stores the receipt once, and
/// WeChat's next retry gets `success` instead of a second publish.
const PUBLISH_WITHIN: Duration = Duration::from_secs(30);

pub(crate) struct LazyPublisher {
    config: Config,
    open: tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>,
}

impl LazyPublisher {
    pub(crate) fn new(config: Config) -> LazyPublisher {
        LazyPublisher {
            config,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes with confirms over a lazily (re)opened connection, all within
    /// [`PUBLISH_WITHIN`].
    pub(crate) async fn publish(&self, outcome: &Outcome) -> anyhow::Result<()> {
        tokio::time::timeout(PUBLISH_WITHIN, async {
            // The lock only guards (re)connecting; confirms are awaited outside it, so
            // receipts are published concurrently.
            let publisher = {
                let mut open = self.open.lock().await;
                if open.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                    let conn = tokio::time::timeout(
                        CONNECT_WITHIN,
                        amqp::connect(&self.config.amqp.url, "wxdispatch-receipts"),
                    )
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no AMQP connection within {CONNECT_WITHIN:?}")
                    })??;
                    let publisher = Arc::new(Publisher::new(&conn, &self.config).await?);
                    *open = Some((conn, publisher));
                }
                open.as_ref().expect("just set").1.clone()
            };
            publisher.outcome(outcome).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no confirm within {PUBLISH_WITHIN:?}"))?
    }
}
