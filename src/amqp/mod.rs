//! RabbitMQ plumbing: connections, the topology wxdispatch declares, and a publisher that
//! always waits for the broker's confirm.

pub mod acks;
pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

pub use acks::Acks;
pub use publisher::{PublishError, Publisher};

/// Opens a named connection, so operators can tell the worker's connections apart in the
/// management UI (and tests can close one by name).
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}
