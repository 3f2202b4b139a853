#!/usr/bin/env bash
# Reproduces the figures of docs/BENCHMARKS.md with `wxdispatch bench`: the `profiling` build
# (release optimisations with symbols) with the `bench` feature, which the product's default
# build leaves out.
#
#   scripts/bench.sh headline   the four targets: throughput and CPU/job over 100,000 jobs,
#                               RSS on a 200,000-job backlog, p99 at a steady 1,000 jobs/s
#   scripts/bench.sh sweep      throughput and CPU/job vs concurrency x simulator latency
#   scripts/bench.sh plot       docs/bench/scaling.png from the sweep's results
#   scripts/bench.sh floor      the libraries' floor: the worker, then `--floor amqp-http`,
#                               then `--floor amqp`, alternating, three rounds
#   scripts/bench.sh round2     issue 18's comparison, three rounds in alternation over a
#                               30,000-job backlog: the build before (OLD_BIN), this build, and
#                               the floors amqp, amqp-http (reqwest) and amqp-hyper; then p99 at
#                               1,000 jobs/s three times, and 1,000 in flight at 200 ms latency
#   scripts/bench.sh round3     issue 30's comparison: the local mode and the shared (Redis)
#                               mode of this build in alternation over a 60,000-job backlog,
#                               five pairs, with the Redis commands and CPU per job
#                               (REDIS_URL, default redis://127.0.0.1:6379/0)
#   scripts/bench.sh            all three
#
# Results are appended as JSON lines (one per run, with the load average before it) to
# docs/bench/headline.jsonl and docs/bench/sweep.jsonl. Run it on a quiet machine: the broker,
# the simulator and the worker share the cores, and anything else running skews every figure.
# Needs RabbitMQ on WXD_AMQP_URL (default localhost); python3 with matplotlib for the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/bench}
BIN=${BIN:-target/profiling/wxdispatch}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
mkdir -p "$OUT"

build() {
    if [[ -z "${NO_BUILD:-}" ]]; then
        # The release build with symbols and line tables (Cargo.toml [profile.profiling]), so
        # perf and callgrind can name functions; the shipped release binary is stripped.
        cargo build --profile profiling --locked --quiet --features bench
    fi
}

bench() {
    # One run, one JSON line; a failed run is recorded too (with its exit status), never hidden.
    local file=$1
    shift
    local line status=0
    line=$("$BIN" bench --json --queue-type "$QUEUE_TYPE" "$@") || status=$?
    if [[ -z "$line" ]]; then
        line="{\"error\":\"exit $status\",\"args\":\"$*\"}"
    fi
    if [[ -n "${LABEL:-}" ]]; then
        # Which build ran, for comparisons of two binaries in one file.
        line=$(LINE="$line" python3 -c 'import json,os; d=json.loads(os.environ["LINE"]); d["build"]=os.environ["LABEL"]; print(json.dumps(d))')
    fi
    echo "$line" | tee -a "$OUT/$file"
}

headline() {
    # Throughput and worker CPU per job: 100,000 jobs, no rate limit.
    bench headline.jsonl --jobs 100000 --concurrency 128 --prefetch 256
    # Memory: 200,000 jobs published first, then the worker starts on the backlog.
    bench headline.jsonl --jobs 200000 --concurrency 128 --prefetch 256 --backlog
    # Latency: a steady 1,000 jobs/s for 30 s.
    bench headline.jsonl --jobs 30000 --concurrency 128 --prefetch 256 --rate 1000
}

sweep() {
    for latency in 0 20 100; do
        for c in 1 8 32 64 128 200 256; do
            # About five seconds of work per point: C in flight, each taking L ms plus ~1 ms.
            local est=$((c * 1000 / (latency + 1)))
            ((est > 4000)) && est=4000
            local jobs=$((est * 5))
            ((jobs < 100)) && jobs=100
            ((jobs > 15000)) && jobs=15000
            local prefetch=$((c * 2 < 16 ? 16 : c * 2))
            bench sweep.jsonl --jobs "$jobs" --concurrency "$c" --prefetch "$prefetch" \
                --latency-ms "$latency"
        done
    done
}

floor() {
    # The same 100,000-job run as the headline's throughput figure, with the real worker and
    # with the floor workers in turn, so drift over the rounds hits all three alike.
    for _ in 1 2 3; do
        bench floor.jsonl --jobs 100000 --concurrency 128 --prefetch 256
        bench floor.jsonl --jobs 100000 --concurrency 128 --prefetch 256 --floor amqp-http
        bench floor.jsonl --jobs 100000 --concurrency 128 --prefetch 256 --floor amqp
    done
}

round2() {
    local old=${OLD_BIN:?set OLD_BIN to the build to compare with}
    local new_label old_label
    new_label=$(git rev-parse --short HEAD)
    old_label=${OLD_LABEL:-$(basename "$old")}
    local drain=(--jobs 30000 --concurrency 128 --prefetch 256 --backlog)
    for _ in 1 2 3; do
        BIN=$old LABEL=$old_label bench round2.jsonl "${drain[@]}"
        LABEL=$new_label bench round2.jsonl "${drain[@]}"
        LABEL=$new_label bench round2.jsonl "${drain[@]}" --floor amqp
        LABEL=$new_label bench round2.jsonl "${drain[@]}" --floor amqp-http
        LABEL=$new_label bench round2.jsonl "${drain[@]}" --floor amqp-hyper
    done
    for _ in 1 2 3; do
        LABEL=$new_label bench round2.jsonl --jobs 30000 --concurrency 128 --prefetch 256 --rate 1000
    done
    LABEL=$new_label bench round2.jsonl --jobs 60000 --concurrency 1000 --prefetch 2000 \
        --latency-ms 200
}

round3() {
    local rev redis=${REDIS_URL:-redis://127.0.0.1:6379/0}
    rev=$(git rev-parse --short HEAD)
    local drain=(--jobs 60000 --concurrency 128 --prefetch 256 --backlog)
    for _ in 1 2 3 4 5; do
        LABEL=$rev-local bench round3.jsonl "${drain[@]}"
        LABEL=$rev-shared bench round3.jsonl "${drain[@]}" --redis-url "$redis"
    done
}

plot() {
    python3 "$OUT/plot.py" "$OUT/sweep.jsonl" "$OUT/scaling.png"
}

case "${1:-all}" in
headline) build && headline ;;
sweep) build && sweep ;;
plot) plot ;;
floor) build && floor ;;
round2) build && round2 ;;
round3) build && round3 ;;
all) build && headline && sweep && plot ;;
*)
    echo "usage: $0 [headline|sweep|plot|floor|round2|round3|all]" >&2
    exit 2
    ;;
esac
