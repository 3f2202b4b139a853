#!/usr/bin/env bash
# The test command: unit tests beside the code and the integration tests in tests/, against
# the RabbitMQ on 127.0.0.1:5672 (and Redis on 6379) started by scripts/services.sh, and the
# embedded WeChat simulator.
#
# Tests named `serial_*` measure rates against the wall clock; on a 2-core machine they only
# mean something when nothing else runs, so they run afterwards, one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The `promtool check metrics` test needs promtool (and fails without it).
bash scripts/install-promtool.sh
cargo test --locked --all-targets -- --skip serial_ "$@"
cargo test --locked --test it serial_ -- --test-threads=1 "$@"
