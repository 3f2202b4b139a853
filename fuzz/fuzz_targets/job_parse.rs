//! Fuzzes the send-job parser (`wxdispatch::job::parse`) with arbitrary bodies.
//! The invariants are in `wxdispatch_fuzz::job_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxdispatch_fuzz::job_parse(data));
