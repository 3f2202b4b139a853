//! Development and operations tools: the benchmark, the demo and the WeChat API simulator.
//!
//! They drive the product end to end, but they are not on its path: the worker never imports
//! anything from here. The simulator is public because the integration tests run against it,
//! the sample job because `examples/hotpath` measures the worker on it, and the demo for its
//! job bodies, which the contract test checks against the job schema.

pub(crate) mod bench;
pub mod demo;
pub mod mock;
pub mod sample;
