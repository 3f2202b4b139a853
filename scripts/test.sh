#!/usr/bin/env bash
# The test command: unit tests beside the code and the integration tests in tests/, against
# the RabbitMQ on 127.0.0.1:5672 (and Redis on 6379) started by scripts/services.sh, and the
# embedded WeChat simulator.
#
# Tests named `serial_*` measure rates against the wall clock; on a 2-core machine they only
# mean something when nothing else runs, so they run afterwards, one at a time. The
# `serial_cluster_*` ones start a three-node cluster beside the broker (scripts/cluster.sh,
# about 20 s, root and the rabbitmq user needed) and stop it again, about a minute each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The `promtool check metrics` test needs promtool (and fails without it).
bash scripts/install-promtool.sh
cargo test --locked --all-targets -- --skip serial_ "$@"
cargo test --locked --test it serial_ -- --test-threads=1 "$@"
