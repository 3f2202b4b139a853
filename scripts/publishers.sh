#!/usr/bin/env bash
# The example publishers (examples/publishers/: Python with pika, Node with amqplib, Go with
# amqp091-go, Java with the RabbitMQ Java client and Jackson) against the real broker, a worker
# and the simulator. Each publishes one job (persistent, message_id, timestamp, user_id, a
# publisher confirm) and must get its `send.sent` outcome, validated; then, with the worker
# stopped, each must exit non-zero because its outcome never comes. Fails if any of the eight
# runs does not end as it should.
#
# Installs what it needs (Debian packages, the Node dependencies; idempotent), builds the
# binary, and starts the simulator and a worker on queue names of its own, which it deletes
# afterwards. Needs RabbitMQ on 127.0.0.1:5672 (scripts/services.sh starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pubs=$root/examples/publishers

echo "== publishers: packages"
packages=(python3-pika python3-jsonschema golang-go golang-github-rabbitmq-amqp091-go-dev
  librabbitmq-client-java libjackson2-databind-java libslf4j-java default-jdk-headless)
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd "$pubs/node" && npm ci --no-audit --no-fund --loglevel=error)

echo "== publishers: build"
cargo build --locked -q
bin=$root/target/debug/wxdispatch
# Go: GOPATH mode against Debian's packaged sources in /usr/share/gocode, no module download.
(cd "$pubs/go" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o publisher .)
java_cp=/usr/share/java/amqp-client.jar:/usr/share/java/jackson-databind.jar:/usr/share/java/jackson-core.jar:/usr/share/java/jackson-annotations.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar
mkdir -p "$pubs/java/classes"
javac -d "$pubs/java/classes" -cp "$java_cp" "$pubs/java/Publish.java"

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
prefix="wxdispatch.publishers.$(date +%s).$$"
mock_port=$(free_port)
http_port=$(free_port)
logs=$(mktemp -d)
export WXD_APPID=wxpublishers00001 WXD_SECRET=publishers-example-secret
export WXD_AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export WXD_JOBS_QUEUE=$prefix.jobs WXD_OUTCOMES_EXCHANGE=$prefix.outcomes
export WXD_OUTCOMES_QUEUE=$prefix.outcomes WXD_DEAD_QUEUE=$prefix.dead
export WXD_API_BASE=http://127.0.0.1:$mock_port WXD_HTTP_ADDR=127.0.0.1:$http_port
export WXD_LOG_FORMAT=text
# What the publishers read.
export AMQP_URL=$WXD_AMQP_URL JOBS_QUEUE=$WXD_JOBS_QUEUE OUTCOMES_EXCHANGE=$WXD_OUTCOMES_EXCHANGE

mock_pid= worker_pid=
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
  PREFIX=$prefix /usr/bin/python3 - <<'PY' || true
import os, pika
p = os.environ["PREFIX"]
conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
ch = conn.channel()
for tier in (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600):
    ch.queue_delete(f"{p}.jobs.delay.v2.{tier}s")
for q in ("jobs", "dead", "outcomes"):
    ch.queue_delete(f"{p}.{q}")
ch.exchange_delete(f"{p}.outcomes")
conn.close()
PY
  rm -rf "$logs"
}
trap cleanup EXIT

echo "== publishers: simulator on :$mock_port, worker on $prefix.*"
"$bin" mock-wechat --listen "127.0.0.1:$mock_port" >"$logs/mock.log" 2>&1 &
mock_pid=$!
"$bin" run >"$logs/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 120); do
  curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null || {
  echo "the worker did not become ready:"; tail -30 "$logs/worker.log"; exit 1; }

run() {
  case $1 in
    python) /usr/bin/python3 "$pubs/python/publish.py" ;;
    node) node "$pubs/node/publish.js" ;;
    go) "$pubs/go/publisher" ;;
    java) java -cp "$pubs/java/classes:$java_cp" Publish ;;
  esac
}

failed=()
for lang in python node go java; do
  echo "-- $lang"
  if ! TIMEOUT_SECS=60 run "$lang"; then
    failed+=("$lang")
  fi
done

echo "== publishers: with the worker stopped, each must fail (no outcome within 3 s)"
kill "$worker_pid"
wait "$worker_pid" || true
worker_pid=
for lang in python node go java; do
  echo "-- $lang (expected to fail)"
  if TIMEOUT_SECS=3 run "$lang"; then
    echo "$lang exited 0 without an outcome"
    failed+=("$lang-without-worker")
  fi
done

if ((${#failed[@]})); then
  echo "publishers FAILED: ${failed[*]}"
  echo "--- worker log (last 40 lines)"
  tail -40 "$logs/worker.log"
  exit 1
fi
echo "publishers: 8 passed, 0 failed"
