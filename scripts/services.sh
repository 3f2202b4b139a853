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
