#!/usr/bin/env bash
# The test command: unit tests beside the code and the integration tests in tests/, against
# the RabbitMQ on 127.0.0.1:5672 (and Redis on 6379) started by scripts/services.sh, and the
# embedded WeChat simulator. Arguments go to both cargo-nextest runs (e.g. a test filter).
#
# Tests run under cargo-nextest, one process per test, with the time limits of
# .config/nextest.toml: a hung test fails instead of blocking CI. (nextest runs no doctests;
# the crate has none that run. Add `cargo test --doc` here when one is written.)
#
# Two passes share the broker through one lock file, /tmp/wxd-broker.lock:
# - the parallel pass holds it SHARED, so several runs (say, in different worktrees) may
#   overlap; it skips the `serial_*` tests, which are #[ignore]d;
# - the serial pass runs only those, one at a time, under the EXCLUSIVE lock: they stop, block
#   or cluster the broker, or measure rates against the clock. Each also takes the lock itself
#   (tests/it/helpers.rs, `serial_broker`), so one run alone by hand is serial too. The
#   `serial_cluster_*` ones start a three-node cluster beside the broker (scripts/cluster.sh,
#   about 20 s, root and the rabbitmq user needed) and stop it again, about a minute each.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=/tmp/wxd-broker.lock
bash scripts/services.sh
# The `promtool check metrics` test needs promtool (and fails without it).
bash scripts/install-promtool.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# Built before the lock is taken, so the lock is held only while tests run.
cargo nextest run --locked --all-targets --no-run
# Queues that killed test runs left behind, removed while no test runs (the exclusive lock).
flock -x "$LOCK" bash scripts/clean-test-queues.sh
flock -s "$LOCK" cargo nextest run --locked --all-targets --no-fail-fast "$@"
# The serial pass takes the exclusive lock itself, so waiting for other runs to finish does not
# count against the tests' time limits; each test finds the inherited lock and keeps it.
flock -x "$LOCK" cargo nextest run --locked --test it --run-ignored only --test-threads 1 \
    --no-fail-fast -E 'test(/::serial_/)' "$@"
