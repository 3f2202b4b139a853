//! Fuzzes the callback XML parser (`wxdispatch::callback::event`) with arbitrary bodies.
//! The invariants are in `wxdispatch_fuzz::callback_xml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxdispatch_fuzz::callback_xml(data));
