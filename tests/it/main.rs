//! Integration tests against the real RabbitMQ on 127.0.0.1:5672 and the embedded simulator.
//!
//! Each test uses its own queue names, so they run in parallel; tests named `serial_*` measure
//! rates and are run one at a time by scripts/test.sh. Set `TEST_LOG=1` to see the
//! worker's logs.

mod bench;
mod cluster;
mod component;
mod consent;
mod contract;
mod deploy;
mod doc_citations;
mod errors;
mod faults;
mod forwarding;
mod fuzz_corpus;
mod helpers;
mod limits;
mod observability;
mod old_server;
mod pipeline;
mod publish;
mod push_events;
mod receipts;
mod serial_marks;
mod shared_limits;
mod subscribe;
mod token_central;
mod token_faults;
mod tokens;
mod topology;
