#!/usr/bin/env bash
# Deletes the queues and exchanges that test runs left on the local broker (names starting
# with `wxd.test.`, the harness's prefix): a killed or timed-out test cannot clean up after
# itself, and a few hundred idle quorum queues slow the broker's start and every handshake.
# scripts/test.sh runs it under the exclusive broker lock, when no test is running. One
# rabbitmqctl call: the broker deletes them itself (a call per queue takes a second each).
set -euo pipefail
PREFIX=${1:-wxd.test.}
rabbitmqctl eval --timeout 300 "
Prefix = <<\"$PREFIX\">>,
Mine = fun(N) -> case binary:match(N, Prefix) of {0, _} -> true; _ -> false end end,
Qs = [Q || Q <- rabbit_amqqueue:list(<<\"/\">>), Mine(element(4, amqqueue:get_name(Q)))],
[catch rabbit_amqqueue:delete(Q, false, false, <<\"cleanup\">>) || Q <- Qs],
Xs = [X || X <- rabbit_exchange:list(<<\"/\">>), Mine(element(4, element(2, X)))],
[catch rabbit_exchange:delete(element(2, X), false, <<\"cleanup\">>) || X <- Xs],
io_lib:format(\"removed ~b queues and ~b exchanges left by earlier test runs\", [length(Qs), length(Xs)])." |
  tr -d '"'
