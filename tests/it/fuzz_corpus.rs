//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets'
//! invariants on every `cargo test`.
//!
//! The fuzzer (`scripts/fuzz.sh`) finds inputs; this keeps them. Every seed and every input a
//! fuzz run found interesting is checked here without libFuzzer, so a regression on any of
//! them fails the ordinary test suite. The invariants are the fuzz crate's own, included by
//! path so the two can never drift apart.

#[path = "../../fuzz/src/lib.rs"]
mod invariants;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `check` on every file of `fuzz/corpus/<target>/` and fails naming each input that
/// panicked, so one bad file doesn't hide the others.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // The seeds alone are more than this; fewer means the corpus went missing.
    assert!(
        files.len() >= 10,
        "only {} inputs in {}",
        files.len(),
        dir.display()
    );

    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs break an invariant (panic messages above); reproduce one \
         with `scripts/fuzz.sh --repro {target} <file>`:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

/// Every committed job body parses without panicking and keeps the job invariants (valid
/// JSON body with `client_msg_id` = id, ids within 64 bytes, short machine reasons).
#[test]
fn job_parse_corpus_keeps_its_invariants() {
    replay("job_parse", invariants::job_parse);
}

/// Every committed callback body parses without panicking, no DOCTYPE is ever accepted, and
/// parsed events survive serialization.
#[test]
fn callback_xml_corpus_keeps_its_invariants() {
    replay("callback_xml", invariants::callback_xml);
}

/// Every committed AES input decrypts without panicking, agrees with the reference reading
/// of the plaintext, and round-trips.
#[test]
fn aes_decrypt_corpus_keeps_its_invariants() {
    replay("aes_decrypt", invariants::aes_decrypt);
}
