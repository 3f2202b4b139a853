#!/usr/bin/env bash
# A three-node RabbitMQ cluster beside the machine's own broker, for the cluster tests.
#
#   bash scripts/cluster.sh start   # nodes wxd-c1..3@localhost, AMQP on 127.0.0.1:5681..5683
#   bash scripts/cluster.sh stop    # stops all three and removes their data
#   bash scripts/cluster.sh kill N  # kills node N hard (SIGKILL), as a lost machine would
#   bash scripts/cluster.sh revive N
#   bash scripts/cluster.sh ctl N ARGS...  # rabbitmqctl against node N (as the rabbitmq user)
#   bash scripts/cluster.sh single  # node 1 alone, not clustered (e.g. with WXD_CLUSTER_DIR on
#                                   # tmpfs, to measure the bench without the disk's syncs)
#
# Each node has its own node name, ports, data and log folders and config file: the machine's
# /etc/rabbitmq/rabbitmq.conf pins port 5672, so the nodes must not read it. They run as the
# `rabbitmq` user (runuser), share its Erlang cookie, and are joined with join_cluster. No
# plugin is enabled (the machine's broker already serves the management and Prometheus ports).
set -euo pipefail
BASE=${WXD_CLUSTER_DIR:-/tmp/wxd-cluster}
NODES=(1 2 3)

node() { echo "wxd-c$1@localhost"; }

env_of() { # i -> the environment one node runs with
  local i=$1 d="$BASE/n$1"
  echo "RABBITMQ_NODENAME=$(node "$i")" \
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
    "RABBITMQ_NODE_PORT=$((5680 + i))" \
    "RABBITMQ_DIST_PORT=$((25680 + i))" \
    "RABBITMQ_MNESIA_BASE=$d/mnesia" \
    "RABBITMQ_LOG_BASE=$d/log" \
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq" \
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins" \
    "RABBITMQ_PID_FILE=$d/pid" \
    "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf" \
    "HOME=/var/lib/rabbitmq"
}

has_name() { # pid, i -> whether that process is node i's VM (grep -z reads the NUL-separated
  # environment itself: a `tr | grep -q` pipeline can fail under pipefail when grep exits first)
  grep -qxz "RABBITMQ_NODENAME=$(node "$2")" "/proc/$1/environ" 2>/dev/null
}

pid_of() { # i -> the pid of node i's VM, if it runs (a killed node leaves its pid file behind)
  local f="$BASE/n$1/pid" pid
  if [[ -f $f ]]; then
    pid=$(cat "$f")
    if [[ -n $pid ]] && has_name "$pid" "$1"; then echo "$pid"; return 0; fi
  fi
  # No pid file, or a stale one: look for the VM among the running beam processes.
  for pid in $(pgrep -x beam.smp || true); do
    if has_name "$pid" "$1"; then echo "$pid"; return 0; fi
  done
  return 1
}

why_down() { # i -> to stderr: what is known about a node that should run and does not
  local d="$BASE/n$1"
  echo "node $(node "$1") is not running (pid file: $(cat "$d/pid" 2>/dev/null || echo none));" \
    "the end of its log:" >&2
  tail -n 40 "$d/log/"*.log >&2 2>/dev/null || echo "(no log in $d/log)" >&2
}

as_rabbit() { # i, command...
  local i=$1; shift
  # shellcheck disable=SC2046
  runuser -u rabbitmq -- env $(env_of "$i") "$@"
}

ctl() { # i, rabbitmqctl args...
  local i=$1; shift
  as_rabbit "$i" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(node "$i")" "$@"
}

start_node() {
  local i=$1 d="$BASE/n$1"
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((5680 + i))
loopback_users = none
# A test machine's disk and memory are shared; don't block publishers over them.
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.8
CONF
  echo "[]." >"$d/enabled_plugins"
  echo "ERL_EPMD_ADDRESS=127.0.0.1" >"$d/rabbitmq-env.conf"
  chown -R rabbitmq:rabbitmq "$d"
  # The package's own script, not /usr/sbin's wrapper: that one writes the machine broker's
  # startup log.
  as_rabbit "$i" /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  for _ in $(seq 90); do
    if ctl "$i" await_startup --timeout 1 >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "node $(node "$i") did not start; its log:" >&2
  tail -n 30 "$d/log/"*.log >&2 || true
  return 1
}

case "${1:-}" in
  start)
    mkdir -p "$BASE"
    chown rabbitmq:rabbitmq "$BASE"
    for i in "${NODES[@]}"; do start_node "$i"; done
    for i in 2 3; do
      ctl "$i" stop_app >/dev/null
      ctl "$i" join_cluster "$(node 1)" >/dev/null
      ctl "$i" start_app >/dev/null
    done
    ctl 1 cluster_status --formatter json | python3 -c \
      'import json,sys; s=json.load(sys.stdin); print("cluster up:", sorted(s["running_nodes"]))'
    ;;
  stop)
    for i in "${NODES[@]}"; do
      ctl "$i" stop >/dev/null 2>&1 || true
      if pid=$(pid_of "$i"); then kill -9 "$pid" || true; fi
    done
    rm -rf "$BASE"
    echo "cluster stopped"
    ;;
  kill)
    # The node name is not on beam's command line (it comes from RABBITMQ_NODENAME), so
    # pkill -f cannot find it: the node writes its pid to RABBITMQ_PID_FILE.
    pid=$(pid_of "$2") || { why_down "$2"; exit 1; }
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    ;;
  revive)
    start_node "$2"
    ;;
  single)
    mkdir -p "$BASE"
    chown rabbitmq:rabbitmq "$BASE"
    start_node 1
    echo "node $(node 1) up on 127.0.0.1:5681, data in $BASE"
    ;;
  ctl)
    shift
    i=$1
    shift
    ctl "$i" "$@"
    ;;
  *)
    echo "usage: $0 start|single|stop|kill N|revive N|ctl N ARGS..." >&2
    exit 2
    ;;
esac
