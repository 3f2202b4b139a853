#!/usr/bin/env bash
# Prometheus smoke test: a real Prometheus (Debian package `prometheus`, installed by
# scripts/check-deploy.sh) scrapes a live worker and RabbitMQ's rabbitmq_prometheus plugin
# (per-object, as docs/OPERATIONS.md configures it) under a small load, and every PromQL query
# and variable of grafana/dashboards/*.json must parse and return data. The worker's target
# carries a `namespace` label, like a Kubernetes scrape, so the namespace/job variables are
# exercised too.
#
#     bash scripts/prometheus-smoke.sh            # builds and uses target/debug/wxdispatch
#     WXD_BIN=target/release/wxdispatch bash scripts/prometheus-smoke.sh
#
# Needs RabbitMQ on 127.0.0.1:5672 with the rabbitmq_prometheus plugin on :15692
# (scripts/services.sh). Everything listens on 127.0.0.1 only,
# on free ports, with unique queue names; every wait is bounded (about 90 s in all). The load
# is chosen so that every panel has data: good sends, rejected and retried ones, a token
# refresh, receipts pushed by the simulator (--push-url) for delivered, blocked and undelivered
# messages, and refused callbacks. A series at zero counts as data (a panel showing 0 is
# correct, an empty panel is not).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${WXD_BIN:-target/debug/wxdispatch}"
JOBS="${SMOKE_JOBS:-300}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'prometheus-smoke: %s\n' "$*" >&2; exit 1; }

command -v prometheus >/dev/null 2>&1 \
  || die "prometheus is not installed; run bash scripts/check-deploy.sh (apt-get install prometheus)"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v curl >/dev/null 2>&1 || die "curl is required"
if [ -z "${WXD_BIN:-}" ]; then
  # Cheap when up to date, and never tests a stale binary.
  say "building $BIN"
  nice -n 5 cargo build --locked --bin wxdispatch
fi

WORK="$(mktemp -d)"
PIDS=()
PREFIX="wxd.smoke.$$.$RANDOM"
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$PREFIX" | while read -r q; do
      # </dev/null: rabbitmqctl reads stdin and would swallow the rest of the list.
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
    # The worker declared an outcomes exchange too. rabbitmqctl has no delete_exchange, so ask
    # the broker directly (harmless if a future broker changes this internal call: || true).
    rabbitmqctl -q list_exchanges name 2>/dev/null | grep -F "$PREFIX" | while read -r x; do
      rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"smoke\">>)." \
        </dev/null >/dev/null 2>&1 || true
    done
  fi
  if [ "$rc" != 0 ]; then
    for f in worker mock prometheus; do
      [ -f "$WORK/$f.log" ] && { echo "--- last lines of $f.log"; tail -n 20 "$WORK/$f.log"; }
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT="$(free_port)"; WORKER_PORT="$(free_port)"; PROM_PORT="$(free_port)"
APPID=wxsmoke000000001

# wait_for DESCRIPTION SECONDS COMMAND...: polls every 0.5 s.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

export WXD_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export WXD_JOBS_QUEUE="$PREFIX.jobs" WXD_OUTCOMES_EXCHANGE="$PREFIX.outcomes"
export WXD_OUTCOMES_QUEUE="$PREFIX.outcomes" WXD_DEAD_QUEUE="$PREFIX.dead"
export WXD_APPID="$APPID" WXD_SECRET="smoke-secret-$RANDOM"
export WXD_CALLBACK_TOKEN="smoke-token-$RANDOM"
export WXD_API_BASE="http://127.0.0.1:$MOCK_PORT"
export WXD_HTTP_ADDR="127.0.0.1:$WORKER_PORT"
export WXD_RETRY_BASE_MS=50 WXD_LOG_FORMAT=text RUST_LOG=warn
# A configured quota, so the "sends today against the daily quota" panel has both series.
export WXD_DAILY_QUOTA=100000
# WXD_BIN names the binary for this script only: the worker refuses unknown WXD_* variables.
unset WXD_CONFIG WXD_REDIS_URL WXD_CALLBACK_AES_KEY WXD_BIN

say "worker on 127.0.0.1:$WORKER_PORT, simulator on 127.0.0.1:$MOCK_PORT (queues $PREFIX.*)"
"$BIN" run >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
"$BIN" mock-wechat --listen "127.0.0.1:$MOCK_PORT" --latency-ms 5 --fail=-1:0.05 \
  --push-url "http://127.0.0.1:$WORKER_PORT/wechat/callback" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_for "the worker's /readyz" 30 curl -fsS "http://127.0.0.1:$WORKER_PORT/readyz"
wait_for "the simulator" 15 curl -fsS "http://127.0.0.1:$MOCK_PORT/mock/stats"
wait_for "RabbitMQ's Prometheus plugin on :15692 (scripts/services.sh enables it)" 15 \
  curl -fsS -o /dev/null http://127.0.0.1:15692/metrics

say "prometheus on 127.0.0.1:$PROM_PORT, scraping every 1s"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: wxdispatch
    static_configs:
      - targets: ["127.0.0.1:$WORKER_PORT"]
        labels:
          namespace: wxd-smoke
  - job_name: rabbitmq
    metrics_path: /metrics/per-object
    static_configs:
      - targets: ["127.0.0.1:15692"]
    # The broker is shared with other tests: keep this run's queues and the queue-less series.
    metric_relabel_configs:
      - source_labels: [queue]
        regex: '(|$PREFIX\..*)'
        action: keep
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1h \
  >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_for "prometheus to be ready" 30 curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"

say "load: $JOBS jobs over about 10 s, a token expiry and refused callbacks"
python3 - "$JOBS" "$APPID" >"$WORK/jobs.jsonl" <<'PY'
import json, sys
n, appid = int(sys.argv[1]), sys.argv[2]
def job(i, touser):
    return {"id": f"smoke-{i}", "appid": appid, "touser": touser,
            "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
            "data": {"User": {"value": "smoke", "color": "#173177"}}}
for i in range(n):
    touser = f"user-{i}"
    if i % 50 == 1: touser = f"user-block-{i}"      # receipt: blocked
    if i % 50 == 2: touser = f"user-sysfail-{i}"    # receipt: undelivered
    if i % 50 == 3: touser = "fail:40003"           # rejected
    if i % 50 == 4: touser = f"flaky:-1:1:user-{i}" # one retry
    print(json.dumps(job(i, touser)))
PY
half=$((JOBS / 2))
head -n "$half" "$WORK/jobs.jsonl" >"$WORK/jobs-1.jsonl"
tail -n +"$((half + 1))" "$WORK/jobs.jsonl" >"$WORK/jobs-2.jsonl"
timeout 60 "$BIN" publish --rate 30 "$WORK/jobs-1.jsonl"
# The cached access token dies mid-run: the next send gets 42001 and the worker refreshes it.
curl -fsS -X POST "http://127.0.0.1:$MOCK_PORT/mock/expire_tokens"
timeout 60 "$BIN" publish --rate 30 "$WORK/jobs-2.jsonl"
for i in 1 2 3; do
  curl -s -o /dev/null -X POST --data '<xml/>' \
    "http://127.0.0.1:$WORKER_PORT/wechat/callback?signature=bad&timestamp=$(date +%s)&nonce=$i"
done

metric_sum() {  # sum of a metric's samples in the worker's /metrics
  curl -fsS "http://127.0.0.1:$WORKER_PORT/metrics" \
    | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { print s + 0 }'
}
finished() { [ "$(metric_sum wxdispatch_jobs_total)" -ge "$JOBS" ]; }
wait_for "all $JOBS jobs to finish" 60 finished
receipts_in() { [ "$(metric_sum wxdispatch_receipts_total)" -ge $((JOBS * 9 / 10)) ]; }
wait_for "the receipts" 30 receipts_in
# A few more scrapes so every rate() has samples after the last change.
sleep 4

say "dashboard queries"
python3 - "http://127.0.0.1:$PROM_PORT" "$APPID" "$PREFIX" grafana/dashboards/*.json <<'PY'
import json, sys, urllib.parse, urllib.request

prom, appid, prefix, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# Grafana's variables: the account, namespace, job and queues are ours; windows cover the
# whole run at a 1 s scrape.
expected = {"appid": appid, "namespace": "wxd-smoke", "job": "wxdispatch"}
subst = {"${appid}": appid, "$appid": appid, "$__rate_interval": "1m", "$__interval": "15s",
         "$__range": "5m", "$namespace": "wxd-smoke", "$job": "wxdispatch",
         "${queue_prefix}": prefix}

def query(path, **params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels") or [])

failures, count = [], 0
for f in files:
    d = json.load(open(f))
    # Each query variable must list our value (its own query, with the variables it uses
    # substituted).
    for v in (d.get("templating") or {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and q.startswith("label_values("):
            metric, label = [s.strip() for s in q[len("label_values("):-1].rsplit(",", 1)]
            for k in sorted(subst, key=len, reverse=True):
                metric = metric.replace(k, subst[k])
            got = query(f"/api/v1/label/{label}/values", **{"match[]": metric})["data"]
            ok = expected.get(v["name"]) in got
            print(f"{'ok  ' if ok else 'FAIL'} variable {v['name']}: {q} -> {got}")
            if not ok:
                failures.append(f"variable {v['name']}: {q} does not list {expected.get(v['name'])}")
    for p in walk(d.get("panels") or []):
        for t in p.get("targets") or []:
            expr = t.get("expr")
            if not expr:
                continue
            for k in sorted(subst, key=len, reverse=True):
                expr = expr.replace(k, subst[k])
            count += 1
            where = f"{f}: panel {p.get('title')!r} {t.get('refId')}"
            if "$" in expr:
                failures.append(f"{where}: unsubstituted variable in {expr}")
                continue
            try:
                r = query("/api/v1/query", query=expr)
            except Exception as e:  # HTTP 400 on a parse error
                body = getattr(e, "read", lambda: b"")().decode(errors="replace")
                failures.append(f"{where}: {expr}: {e} {body}")
                print(f"FAIL {where}: {e}")
                continue
            result = r["data"]["result"]
            if r.get("status") != "success" or not result:
                failures.append(f"{where}: no data for {expr}")
                print(f"FAIL {where}: no data")
                continue
            shown = ", ".join(f"{s['metric'] or '{}'}={s['value'][1]}" for s in result[:3])
            print(f"ok   {where}: {len(result)} series ({shown})")
if count == 0:
    failures.append("no dashboard queries found")
print(f"\n{count} queries evaluated, {len(failures)} failed")
for x in failures:
    print("  " + x)
sys.exit(1 if failures else 0)
PY
echo "prometheus-smoke: ok"
