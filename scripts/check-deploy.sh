#!/usr/bin/env bash
# Checks the deployment and observability artifacts: k8s/, deploy/prometheus/, grafana/,
# Dockerfile. Installs what it needs when missing (Debian packages and PyPI only), so it runs
# as root on a fresh Debian machine or CI:  bash scripts/check-deploy.sh
#
# Idempotent; writes only to a temporary directory (and installs tools). Exits non-zero if any
# check fails, after running them all. Last line: "check-deploy: N passed, M failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say() { printf '\n==> %s\n' "$*"; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo" || SUDO="__none__"
fi
APT_UPDATED=0
apt_install() {
  [ "$SUDO" = "__none__" ] && die "need root (or sudo) to apt-get install $*"
  if [ "$APT_UPDATED" = 0 ]; then
    run $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ------------------------------------------------------------------------------- tools
say "tools"
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip

run bash "$ROOT/scripts/install-promtool.sh"

# Python modules: PyYAML and kubernetes-validate (PyPI). Debian's own python3 refuses a plain
# pip install (PEP 668), hence the --break-system-packages retry.
if ! python3 -c 'import yaml, kubernetes_validate' >/dev/null 2>&1; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  pip_args=(install --quiet --disable-pip-version-check pyyaml kubernetes-validate)
  run python3 -m pip "${pip_args[@]}" \
    || run python3 -m pip "${pip_args[@]}" --break-system-packages
  python3 -c 'import yaml, kubernetes_validate' || die "cannot import yaml / kubernetes_validate"
fi
echo "kubernetes-validate: $(python3 -m kubernetes_validate --version 2>&1 | tail -n1)"

# kustomize renderer: `kubectl kustomize` (kubectl embeds kustomize) or standalone `kustomize`;
# else Debian's kubernetes-client package (kubectl 1.20, embedded kustomize v2, enough for this
# plain-resources base). deploy/tools/render_kustomize.py is the last resort and is also
# compared against the real render whenever one is available. CHECK_DEPLOY_RENDERER=python
# forces the fallback.
RENDER=()
if [ "${CHECK_DEPLOY_RENDERER:-}" = python ]; then
  :  # forced fallback (to exercise deploy/tools/render_kustomize.py)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  RENDER=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  RENDER=(kustomize build)
elif [ "$SUDO" != "__none__" ] && apt_install kubernetes-client \
     && command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  RENDER=(kubectl kustomize)
fi
if [ "${#RENDER[@]}" -gt 0 ]; then
  echo "renderer: ${RENDER[*]}"
else
  echo "renderer: none of kubectl/kustomize available; using deploy/tools/render_kustomize.py"
fi

# ------------------------------------------------------------------------------- checks
PASSED=0
FAILED=0
FAILED_NAMES=()
check() {  # check "description" cmd args...
  local name="$1"; shift
  say "$name"
  # Not `if ( ... )`: bash ignores set -e inside a tested command, so a failing step in the
  # middle of a check function would go unnoticed.
  local rc
  set +e
  ( set -e; "$@" )
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    PASSED=$((PASSED + 1)); echo "PASS: $name"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); echo "FAIL: $name (exit $rc)"
  fi
}

render_base() {
  run python3 deploy/tools/render_kustomize.py k8s > "$WORK/rendered-fallback.yaml"
  if [ "${#RENDER[@]}" -gt 0 ]; then
    run "${RENDER[@]}" k8s > "$WORK/rendered.yaml"
    run python3 deploy/tools/compare_renders.py "$WORK/rendered.yaml" "$WORK/rendered-fallback.yaml"
  else
    cp "$WORK/rendered-fallback.yaml" "$WORK/rendered.yaml"
  fi
  echo "rendered objects:"; grep -E '^kind:' "$WORK/rendered.yaml" | sort | uniq -c
}

cross_check() {
  # Splits core kinds into $WORK/split/core/ for kubernetes-validate; structurally checks the
  # CRD kinds; cross-checks names, selectors, ports, security settings and config keys.
  run python3 deploy/tools/check_manifests.py "$WORK/rendered.yaml" "$WORK/split" k8s/examples/*.yaml
}

validate_core() {
  # kubernetes-validate ships only the built-in Kubernetes API schemas: a CRD kind
  # (ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule) merely warns
  # "Couldn't find schema" and passes, so only the core kinds are given to it here (strict:
  # unknown fields are errors); the CRD kinds were checked by check_manifests.py above.
  local files=("$WORK"/split/core/*.yaml)
  [ -e "${files[0]}" ] || { echo "no core documents to validate"; return 1; }
  run python3 -m kubernetes_validate --strict --kubernetes-version 1.28.0 "${files[@]}"
  run python3 -m kubernetes_validate --strict "${files[@]}"
}

dashboard() {
  run python3 -m json.tool grafana/dashboards/wxdispatch.json > /dev/null
  run python3 deploy/tools/check_dashboard.py --promql-rules "$WORK/dashboard-queries.yml"
  # promtool parses every panel query (as recording rules) to catch PromQL syntax errors.
  run promtool check rules "$WORK/dashboard-queries.yml"
}

metric_names() {
  # Every wxdispatch_* name used by grafana/ and rules.yml must be one the binary exports,
  # as listed in deploy/metric-names.txt (the Rust tests compare that list with /metrics).
  local bad
  bad="$(python3 - <<'PY'
import re
names = [l.strip() for l in open("deploy/metric-names.txt") if l.strip()]
ok = all(re.fullmatch(r"wxdispatch_[a-z0-9_]+", n) for n in names) and len(names) == len(set(names))
print("" if ok else "deploy/metric-names.txt: malformed or duplicate names")
PY
)"
  [ -z "$bad" ] || { echo "FAIL: $bad"; return 1; }
  run python3 scripts/extract-metric-names.py > "$WORK/used-metrics.txt"
  sort -u deploy/metric-names.txt > "$WORK/known-metrics.txt"
  echo "$(wc -l < "$WORK/used-metrics.txt") metric names used, $(wc -l < "$WORK/known-metrics.txt") known"
  local unknown
  unknown="$(comm -23 "$WORK/used-metrics.txt" "$WORK/known-metrics.txt")"
  if [ -n "$unknown" ]; then
    echo "FAIL: metric names not in deploy/metric-names.txt:"
    printf '%s\n' "$unknown" | sed 's/^/  /'
    echo "first use of each:"
    python3 scripts/extract-metric-names.py --where | grep -F -w -f <(printf '%s\n' "$unknown") || true
    return 1
  fi
  local unused
  unused="$(comm -13 "$WORK/used-metrics.txt" "$WORK/known-metrics.txt")"
  [ -z "$unused" ] || echo "note: exported but not used by the dashboard/alerts: $unused"
}

dockerfile() {
  # No docker engine here: static checks of what the image must provide.
  local f=Dockerfile
  grep -Eq '^FROM .* AS build' "$f"                        || { echo "no build stage"; return 1; }
  grep -Eq 'cargo build --release --locked' "$f"          || { echo "no cargo build --release --locked"; return 1; }
  grep -Eq '^USER 10001(:10001)?$' "$f"                    || { echo "not USER 10001"; return 1; }
  grep -Eq '^EXPOSE 9090$' "$f"                            || { echo "no EXPOSE 9090"; return 1; }
  grep -Eq '^ENTRYPOINT \["wxdispatch"\]$' "$f"            || { echo "ENTRYPOINT is not [\"wxdispatch\"]"; return 1; }
  grep -Eq '^CMD \["run"\]$' "$f"                          || { echo "CMD is not [\"run\"]"; return 1; }
  grep -Eq '/usr/local/bin/wxdispatch' "$f"                || { echo "binary not at /usr/local/bin/wxdispatch"; return 1; }
  grep -Eq '^/?target/?$' .dockerignore                     || { echo ".dockerignore does not exclude target/"; return 1; }
  # The binary name built must be the package's.
  python3 - <<'PY'
import tomllib, sys
pkg = tomllib.load(open("Cargo.toml", "rb"))["package"]["name"]
sys.exit(0 if pkg == "wxdispatch" else f"Cargo.toml package is {pkg!r}, Dockerfile builds wxdispatch")
PY
  echo "ok: Dockerfile multi-stage, --locked, uid 10001, EXPOSE 9090, ENTRYPOINT/CMD; .dockerignore excludes target/"
}

check "render k8s/ kustomization" render_base
check "manifest cross-checks and CRD structure (ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule)" cross_check
check "kubernetes-validate --strict (core kinds, k8s 1.28 and latest bundled)" validate_core
check "promtool check rules deploy/prometheus/rules.yml" run promtool check rules deploy/prometheus/rules.yml
check "promtool test rules deploy/prometheus/rules.test.yml" run promtool test rules deploy/prometheus/rules.test.yml
check "k8s/prometheusrule.yaml matches deploy/prometheus/rules.yml" run python3 deploy/tools/gen_prometheusrule.py --check
check "grafana dashboard JSON, provisioning and PromQL syntax" dashboard
check "metric names used are all in deploy/metric-names.txt" metric_names
check "Dockerfile and .dockerignore" dockerfile

say "summary"
for n in "${FAILED_NAMES[@]+"${FAILED_NAMES[@]}"}"; do echo "failed: $n"; done
echo "check-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
