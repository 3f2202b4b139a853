#!/usr/bin/env bash
# Makes sure RabbitMQ (and Redis, for the shared rate limiter tests) run on localhost.
# Idempotent: does nothing when they already answer.
set -euo pipefail

wait_for() { # name, tries, command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then echo "$name is up"; return 0; fi
    sleep 1
  done
  echo "$name did not come up" >&2
  return 1
}

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "installing rabbitmq-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_for RabbitMQ 90 rabbitmq-diagnostics -q ping
# The broker's open-file limit. RabbitMQ counts every classic queue's files and every
# connection's socket against it; at the usual default (1024, of which RabbitMQ keeps about
# 930) a parallel test pass with a few hundred queues exhausts it, and then every new
# connection waits for ever in the AMQP handshake while the port still accepts. A broker
# started with less is restarted with the shell's hard limit (after removing what earlier
# test runs left behind, so that it starts quickly).
broker_pid() { rabbitmqctl eval -q 'list_to_integer(os:getpid()).' 2>/dev/null; }
broker_fds() {
  local pid
  pid=$(broker_pid) || return 1
  awk '/^Max open files/ {print $4}' "/proc/$pid/limits"
}
FDS_WANTED=$(ulimit -Hn)
[[ $FDS_WANTED == unlimited || $FDS_WANTED -gt 65536 ]] && FDS_WANTED=65536
fds=$(broker_fds || echo unknown)
if [[ $fds =~ ^[0-9]+$ && $fds -lt 8192 && $FDS_WANTED -gt $fds ]]; then
  echo "restarting RabbitMQ with $FDS_WANTED open files (it has $fds)"
  pid=$(broker_pid)
  timeout 120 bash "$(dirname "$0")/clean-test-queues.sh" || true
  timeout 150 rabbitmqctl -q shutdown --timeout 120 || kill -9 "$pid" || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  # As /usr/sbin/rabbitmq-server would start it, but with the limit raised inside the
  # rabbitmq user's session: `su` applies the PAM defaults (1024) to whatever it starts.
  su rabbitmq -s /bin/sh -c \
    "cd /var/lib/rabbitmq && ulimit -n $FDS_WANTED && exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
  wait_for RabbitMQ 180 rabbitmq-diagnostics -q ping
  echo "RabbitMQ open files: $(broker_fds || echo unknown)"
fi
# The broker answers ping before it accepts AMQP connections: wait for the port too.
wait_for "RabbitMQ AMQP port" 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
# RabbitMQ's own Prometheus exporter (queue depths, publish/deliver rates), on :15692; the
# Prometheus smoke test scrapes it. Enabling it on a running broker needs no restart.
if ! rabbitmq-plugins is_enabled rabbitmq_prometheus >/dev/null 2>&1; then
  rabbitmq-plugins enable rabbitmq_prometheus
fi
wait_for "RabbitMQ Prometheus plugin" 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/15692'

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_for Redis 30 redis-cli -h 127.0.0.1 ping
