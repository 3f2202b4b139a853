//! Development and operations tools: the benchmark, the demo and the WeChat API simulator.
//!
//! They drive the product end to end, but they are not on its path: the worker never imports
//! anything from here. The simulator is public because the integration tests run against it,
//! the sample job because `examples/hotpath` measures the worker on it, and the demo for its job
//! bodies, which the contract test checks against the job schema. The benchmark is
//! compiled only with the `bench` feature: it alone needs `libc` (the `/proc` and rusage
//! readers) and hyper's own client (the floor worker).

#[cfg(feature = "bench")]
pub(crate) mod bench;
pub mod demo;
pub mod mock;
pub mod sample;
