//! Development and operations tools: the benchmark, the demo and the WeChat API simulator.
//! They run the product end to end but are not part of its path; nothing in the product
//! imports them.

pub mod bench;
pub mod demo;
pub mod mock;
