#!/usr/bin/env bash
# The demo: make sure RabbitMQ runs, build, and run `wxdispatch demo` (embedded simulator,
# no WeChat credentials needed). Extra arguments go to the demo, e.g. --jobs 5000 --safe-mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo run --release --locked --quiet -- demo "$@"
