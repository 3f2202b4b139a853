//! Fuzzes safe-mode AES (`wxdispatch::crypto`) with arbitrary ciphertext, plaintext and round trips.
//! The invariants are in `wxdispatch_fuzz::aes_decrypt`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxdispatch_fuzz::aes_decrypt(data));
