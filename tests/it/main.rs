//! Integration tests against the real RabbitMQ on 127.0.0.1:5672 and the embedded simulator.
//!
//! Each test uses its own queue names, so they run in parallel. Set `TEST_LOG=1` to see the
//! worker's logs.

mod helpers;
mod pipeline;
