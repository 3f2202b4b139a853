#!/usr/bin/env bash
# Installs promtool when it is missing: Debian's `prometheus` package ships /usr/bin/promtool
# (there is no separate promtool package). policy-rc.d keeps the package from starting a
# Prometheus server on :9090. Used by scripts/check-deploy.sh (rule and dashboard checks) and
# scripts/test.sh (the `promtool check metrics` test, which fails without it).
# Idempotent: does nothing when promtool is on PATH.
set -euo pipefail

die() { printf 'install-promtool: %s\n' "$*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install prometheus"
    SUDO="sudo"
  fi
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  install() {
    $SUDO apt-get update -qq &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  }
  install || { [ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
  command -v promtool >/dev/null 2>&1 || die "the prometheus package did not provide promtool"
fi
echo "promtool: $(promtool --version 2>&1 | head -n1)"
