#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz + libFuzzer) of the code that reads untrusted bytes: the
# send-job parser, the callback XML parser and the safe-mode AES decrypt. The targets are in
# fuzz/fuzz_targets/, their invariants in fuzz/src/lib.rs, the corpus in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh                        build, then fuzz each target for FUZZ_SECONDS (60)
#   scripts/fuzz.sh job_parse aes_decrypt  only these targets
#   scripts/fuzz.sh --merge [TARGET...]    also keep the new inputs that reach new coverage
#                                          (added to fuzz/corpus/<target>/; commit them)
#   scripts/fuzz.sh --repro TARGET FILE    run one input (say a crash) and show its panic
#
# A run only reads the committed corpus; what it discovers goes to fuzz/target/scratch/ unless
# --merge is given. A crash (a panic: a broken invariant) or an input slower than 10 s makes the
# script exit non-zero after all targets ran, leaving the input in fuzz/artifacts/<target>/.
# Reproduce it with --repro, fix the code, and copy the input into fuzz/corpus/<target>/ so
# tests/it/fuzz_corpus.rs keeps it fixed on every `cargo test`.
#
# Works on stable Rust: without a sanitizer cargo-fuzz only uses stable instrumentation flags
# (-Cpasses=sancov-module, -Cllvm-args=...). Panics are what the invariants report, and Rust
# code needs no AddressSanitizer to be memory safe. libFuzzer itself is built from C++ source,
# so a C++ compiler must be installed (g++ or clang++).
#
# Cost: the first build compiles the whole crate and its dependencies with coverage
# instrumentation into fuzz/target/ (several minutes on two cores); later builds are
# incremental.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(job_parse callback_xml aes_decrypt)
seconds=${FUZZ_SECONDS:-60}
# One codegen unit (cargo-fuzz's default) fuzzes a little faster but builds much slower; for
# bounded CI runs the build dominates.
codegen_units=${FUZZ_CODEGEN_UNITS:-16}

usage() {
    sed -n '6,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

merge=false
repro=()
targets=()
while (($#)); do
    case "$1" in
    --merge) merge=true ;;
    --repro)
        (($# >= 3)) || usage
        repro=("$2" "$(realpath "$3")")
        shift 2
        ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
cd "$(dirname "$0")/../fuzz"
for t in "${targets[@]}"; do
    [[ -f "fuzz_targets/$t.rs" ]] || {
        echo "fuzz.sh: no target '$t' (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
    }
done

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

flags=(--sanitizer none --codegen-units "$codegen_units")

if ((${#repro[@]})); then
    # libFuzzer runs the files it is given once each, instead of fuzzing.
    exec cargo fuzz run "${flags[@]}" "${repro[0]}" "${repro[1]}"
fi

echo "== building fuzz targets: ${targets[*]}"
start=$SECONDS
for t in "${targets[@]}"; do
    cargo fuzz build "${flags[@]}" "$t"
done
echo "fuzz build took $((SECONDS - start)) s"

failed=()
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds} s"
    scratch="target/scratch/$t"
    mkdir -p "$scratch" "corpus/$t"
    # New inputs are written to the first directory (scratch); the committed corpus is read.
    if ! cargo fuzz run "${flags[@]}" "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -dict="dicts/$t.dict" -print_final_stats=1; then
        failed+=("$t")
        continue
    fi
    if $merge; then
        before=$(find "corpus/$t" -type f | wc -l)
        # Copies into corpus/ only the scratch inputs that reach code (edges) the corpus does
        # not; ignoring hit counts keeps the committed corpus to a few hundred small files.
        cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "$scratch" -- -merge=1 -use_counters=0 2>&1 |
            grep -E '^(MERGE-OUTER|INFO: .*files found)' || true
        echo "corpus/$t: $before -> $(find "corpus/$t" -type f | wc -l) inputs"
    fi
done

if ((${#failed[@]})); then
    echo "fuzz.sh: invariant broken in: ${failed[*]}; the inputs are in fuzz/artifacts/" >&2
    for t in "${failed[@]}"; do
        find "artifacts/$t" -type f 2>/dev/null | sed "s|^|  fuzz/|" >&2
        echo "  reproduce: scripts/fuzz.sh --repro $t fuzz/artifacts/$t/<file>" >&2
    done
    exit 1
fi
echo "fuzzing finished: no invariant broken in ${targets[*]} (${seconds} s each)"
