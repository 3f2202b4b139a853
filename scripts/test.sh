#!/usr/bin/env bash
# The test command: unit tests beside the code and the integration tests in tests/, against
# the RabbitMQ on 127.0.0.1:5672 (see scripts/services.sh) and the embedded WeChat simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --locked --all-targets "$@"
