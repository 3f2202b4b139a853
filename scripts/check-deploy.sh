#!/usr/bin/env bash
# Checks the deployment and observability artifacts: k8s/, deploy/prometheus/, grafana/,
# Dockerfile, licences. Installs what it needs when missing (Debian packages, PyPI, npm and
# crates.io only), so it runs as root on a fresh Debian machine or CI:
#   bash scripts/check-deploy.sh
#
# Idempotent; writes only to a temporary directory (and installs tools, and builds
# target/debug/wxdispatch for the check-config check). Exits non-zero if any
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

# cargo-deny from crates.io, only when missing: it compiles for several minutes on 2 cores
# (8 min measured on the shared development machine).
if ! cargo deny --version >/dev/null 2>&1; then
  run cargo install cargo-deny --locked --version 0.20.2
fi
echo "cargo-deny: $(cargo deny --version)"

# KEDA and Prometheus-Operator schemas: npm packages (pinned in
# deploy/tools/crd-validate/package-lock.json), installed into a cache directory keyed by the
# lock file's hash, so a second run is offline and instant.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
CRD_LOCK_HASH="$(sha256sum deploy/tools/crd-validate/package-lock.json | cut -c1-16)"
CRD_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/wxdispatch/crd-validate-$CRD_LOCK_HASH"
if [ ! -d "$CRD_DIR/node_modules/@kubernetes-models/keda" ]; then
  mkdir -p "$CRD_DIR"
  cp deploy/tools/crd-validate/package.json deploy/tools/crd-validate/package-lock.json "$CRD_DIR/"
  # engine-strict off: the packages declare node >= 22 but their validators run on Debian's
  # Node 20 (checked by the "rejects a typo" check below).
  run npm ci --prefix "$CRD_DIR" --no-audit --no-fund --loglevel=error
fi
cp deploy/tools/crd-validate/validate.mjs "$CRD_DIR/"
echo "crd schemas: $(cd "$CRD_DIR" && node -e 'for (const p of ["keda","prometheus-operator"]) console.log("@kubernetes-models/" + p + " " + require("./node_modules/@kubernetes-models/" + p + "/package.json").version)' | paste -sd' ')"

# kustomize renderer: `kubectl kustomize` (kubectl embeds kustomize) or standalone `kustomize`,
# if it is kustomize v4 or later (components; Debian's kubernetes-client, kubectl 1.20, embeds
# v2 and is not enough). deploy/tools/render_kustomize.py renders every time and must agree
# with the real kustomize whenever one is present. CHECK_DEPLOY_RENDERER=python uses the
# fallback alone.
kustomize_ok() {  # a kustomize that knows components (v4+)
  "$@" --help 2>/dev/null | grep -q . || return 1
  local v
  v="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
  [ "${1:-}" != kubectl ] || [ "${v:-0}" -ge 4 ]
}
RENDER=()
if [ "${CHECK_DEPLOY_RENDERER:-}" = python ]; then
  :  # forced fallback (to exercise deploy/tools/render_kustomize.py)
elif command -v kubectl >/dev/null 2>&1 && kustomize_ok kubectl kustomize; then
  RENDER=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1 && kustomize_ok kustomize build; then
  RENDER=(kustomize build)
fi
if [ "${#RENDER[@]}" -gt 0 ]; then
  echo "renderer: ${RENDER[*]}"
else
  echo "renderer: no kustomize v4+ (kubectl or kustomize) here; using deploy/tools/render_kustomize.py alone"
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

# The renders CI checks: the base alone, the base with each component, the example overlay.
# KEDA is rendered with the Redis limiter, which it requires (a render without it is refused:
# see the negative check below).
VARIANTS=(base redis-limiter keda prometheus-operator overlay)
variant_dir() {  # NAME -> a directory to render
  case "$1" in
    base) echo "$ROOT/k8s" ;;
    overlay)
      # The overlay's secret files are git-ignored (an operator creates them): render a copy
      # of k8s/ with the base's placeholders in their place, never anyone's real files.
      if [ ! -d "$WORK/k8s-overlay" ]; then
        cp -r "$ROOT/k8s" "$WORK/k8s-overlay"
        rm -rf "$WORK/k8s-overlay/overlays/example/secrets"
        cp -r "$ROOT/k8s/base/secrets" "$WORK/k8s-overlay/overlays/example/secrets"
      fi
      echo "$WORK/k8s-overlay/overlays/example" ;;
    *)
      local dir="$WORK/variants/$1" comps=()
      case "$1" in
        keda) comps=(redis-limiter keda) ;;
        keda-without-redis) comps=(keda) ;;
        *) comps=("$1") ;;
      esac
      mkdir -p "$dir"
      # kustomize refuses absolute paths: relative ones from the temporary directory.
      local k8s
      k8s="$(realpath --relative-to="$dir" "$ROOT/k8s")"
      {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources: [\"$k8s/base\"]"
        echo "components:"
        for c in "${comps[@]}"; do echo "  - $k8s/components/$c"; done
      } > "$dir/kustomization.yaml"
      echo "$dir" ;;
  esac
}

render() {  # NAME: writes $WORK/rendered-NAME.yaml
  local name=$1 dir
  dir="$(variant_dir "$name")"
  run python3 deploy/tools/render_kustomize.py "$dir" > "$WORK/rendered-$name-fallback.yaml"
  if [ "${#RENDER[@]}" -gt 0 ]; then
    run "${RENDER[@]}" "$dir" > "$WORK/rendered-$name.yaml"
    run python3 deploy/tools/compare_renders.py "$WORK/rendered-$name.yaml" "$WORK/rendered-$name-fallback.yaml"
  else
    cp "$WORK/rendered-$name-fallback.yaml" "$WORK/rendered-$name.yaml"
  fi
  echo "$name:" $(grep -E '^kind:' "$WORK/rendered-$name.yaml" | sort | uniq -c | awk '{print $3 "x" $1}')
}

render_all() {
  for v in "${VARIANTS[@]}"; do render "$v"; done
}

cross_check() {
  # Per render: splits core kinds into $WORK/split/NAME/core/ (kubernetes-validate) and CRD
  # kinds into .../crd/ (crd-validate); cross-checks names, selectors, ports, replicas,
  # NetworkPolicy sources, the PDB policy, security settings and config keys.
  local v examples bad=0
  # The binary lists the WXD_* keys it accepts (check-config --list-keys); the manifests'
  # ConfigMaps are checked against that list, not against a parse of the source.
  run cargo build --locked --quiet --bin wxdispatch
  export WXD_BIN="${CARGO_TARGET_DIR:-target}/debug/wxdispatch"
  for v in "${VARIANTS[@]}"; do
    examples=()
    [ "$v" = base ] && examples=(k8s/examples/*.yaml)
    # Every render is checked, even after one fails, so one run lists every problem.
    run python3 deploy/tools/check_manifests.py --render "$v" "$WORK/rendered-$v.yaml" \
      "$WORK/split/$v" "${examples[@]+"${examples[@]}"}" || bad=1
  done
  return "$bad"
}

refuses_keda_without_redis() {
  # The cross-checks can fail: KEDA without the shared limiter must be refused.
  render keda-without-redis >/dev/null
  if python3 deploy/tools/check_manifests.py --render keda "$WORK/rendered-keda-without-redis.yaml" \
      "$WORK/split-negative" > "$WORK/negative.log" 2>&1; then
    echo "check_manifests.py accepted KEDA without the Redis limiter"; return 1
  fi
  grep -F "without the shared Redis limiter" "$WORK/negative.log" | sed 's/^FAIL: /refused as expected: /' 
}

binary_accepts_renders() {
  # The binary itself loads each render's settings as a pod would: the worker container's
  # envFrom ConfigMap as its environment, and every volume (the accounts ConfigMap, the Secret)
  # written out at its mountPath, under a temporary root that the paths are moved into.
  run cargo build --locked --quiet --bin wxdispatch
  local bin="${CARGO_TARGET_DIR:-target}/debug/wxdispatch" v
  for v in "${VARIANTS[@]}"; do
    python3 - "$bin" "$WORK/rendered-$v.yaml" "$WORK/pod-$v" "$v" <<'PY'
import base64, os, pathlib, subprocess, sys, yaml
binary, rendered, root, name = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
dep = next(d for d in docs if d["kind"] == "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
moved = lambda p: root + p
env = {"PATH": os.environ["PATH"]}
for e in c.get("envFrom") or []:
    env.update(named[("ConfigMap", e["configMapRef"]["name"])]["data"])
for e in c.get("env") or []:
    env[e["name"]] = e["value"]
volumes = {v["name"]: v for v in pod["volumes"]}
for m in c.get("volumeMounts") or []:
    v = volumes[m["name"]]
    if "configMap" in v:
        files = named[("ConfigMap", v["configMap"]["name"])]["data"]
    else:
        files = {k: base64.b64decode(x).decode()
                 for k, x in named[("Secret", v["secret"]["secretName"])]["data"].items()}
    for f, text in files.items():
        path = pathlib.Path(moved(m["mountPath"])) / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("/etc/wxdispatch/", moved("/etc/wxdispatch/")))
env = {k: (moved(x) if x.startswith("/etc/wxdispatch/") else x) for k, x in env.items()}
r = subprocess.run([binary, "check-config"], env=env, capture_output=True, text=True)
print(f"{name}: exit {r.returncode}: {r.stderr.strip()}")
sys.exit(r.returncode)
PY
  done
}

refuses_secrets_in_env() {
  # The cross-checks can fail: the overlay's Deployment with the Secret back in envFrom and the
  # settings' ConfigMap by its plain name must be refused.
  python3 - "$WORK/rendered-overlay.yaml" > "$WORK/rendered-secret-env.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Deployment":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["envFrom"] = [{"configMapRef": {"name": "wxdispatch-config"}},
                        {"secretRef": {"name": "wxdispatch-secrets"}}]
yaml.safe_dump_all(docs, sys.stdout)
PY
  if python3 deploy/tools/check_manifests.py --render overlay "$WORK/rendered-secret-env.yaml" \
      "$WORK/split-negative-env" > "$WORK/negative-env.log" 2>&1; then
    echo "check_manifests.py accepted a Secret in envFrom"; return 1
  fi
  grep -F "puts secrets in the environment" "$WORK/negative-env.log" | sed 's/^FAIL: /refused as expected: /'
  grep -F "envFrom must name the generated wxdispatch-config" "$WORK/negative-env.log" | sed 's/^FAIL: /refused as expected: /'
}

generated_names_roll() {
  # A changed setting is a new ConfigMap name in the Deployment's pod template, so the pods
  # roll: render the base, change one value in a copy, render again, compare.
  local a="$WORK/roll-a.yaml" b="$WORK/roll-b.yaml"
  cp -r "$ROOT/k8s" "$WORK/k8s-roll"
  sed -i 's/^WXD_CONCURRENCY=.*/WXD_CONCURRENCY=65/' "$WORK/k8s-roll/base/config.env"
  printf '%s' 'CHANGE_ME_rotated' > "$WORK/k8s-roll/base/secrets/callback-token"
  local renderer=(python3 deploy/tools/render_kustomize.py)
  [ "${#RENDER[@]}" = 0 ] || renderer=("${RENDER[@]}")
  run "${renderer[@]}" "$ROOT/k8s" > "$a"
  run "${renderer[@]}" "$WORK/k8s-roll" > "$b"
  python3 - "$a" "$b" <<'PY'
import json, sys, yaml
def template(path):
    dep = next(d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "Deployment")
    return dep["spec"]["template"]
ta, tb = template(sys.argv[1]), template(sys.argv[2])
refs = lambda t: sorted(json.dumps(x) for x in t["spec"]["volumes"]) + [json.dumps(t["spec"]["containers"][0]["envFrom"])]
changed = [x for x, y in zip(refs(ta), refs(tb)) if x != y]
print(f"{len(changed)} references in the pod template changed")
for x in changed:
    print("  was", x)
# the env ConfigMap, and the Secret volume
sys.exit(0 if len(changed) == 2 else "a changed setting or secret must change the pod template")
PY
}

validate_core() {
  # kubernetes-validate ships only the built-in Kubernetes API schemas, so it gets the core
  # kinds of every render (strict: unknown fields are errors); the CRD kinds go to
  # validate_crds.
  local files=("$WORK"/split/*/core/*.yaml)
  [ -e "${files[0]}" ] || { echo "no core documents to validate"; return 1; }
  run python3 -m kubernetes_validate --strict --kubernetes-version 1.28.0 "${files[@]}" >/dev/null
  run python3 -m kubernetes_validate --strict "${files[@]}" >/dev/null
  echo "${#files[@]} core documents valid (k8s 1.28 and the latest bundled schemas)"
}

validate_crds() {
  # KEDA ScaledObject/TriggerAuthentication and Prometheus-Operator ServiceMonitor/
  # PrometheusRule against those projects' own schemas (npm @kubernetes-models/*), plus
  # unknown fields, which the API server would silently prune.
  local files=("$WORK"/split/*/crd/*.json)
  [ -e "${files[0]}" ] || { echo "no CRD documents to validate"; return 1; }
  run node "$CRD_DIR/validate.mjs" "${files[@]}"
}

crd_validator_rejects_a_typo() {
  # The CRD check can fail: a misspelt field, a wrong type and a bad duration are refused.
  python3 - "$WORK/split/overlay/crd" "$WORK/bad-crd" <<'PY'
import json, pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(exist_ok=True)
for f in src.glob("*.json"):
    d = json.loads(f.read_text())
    if d["kind"] == "ScaledObject":
        d["spec"]["minReplicas"] = d["spec"].pop("minReplicaCount")
    elif d["kind"] == "ServiceMonitor":
        d["spec"]["endpoints"][0]["interval"] = "30 seconds"
    elif d["kind"] == "PrometheusRule":
        d["spec"]["groups"][0]["rules"][0]["for"] = 5
    else:
        continue
    (out / f.name).write_text(json.dumps(d))
PY
  if node "$CRD_DIR/validate.mjs" "$WORK"/bad-crd/*.json > "$WORK/bad-crd.log"; then
    cat "$WORK/bad-crd.log"; echo "crd-validate accepted broken objects"; return 1
  fi
  local n
  n="$(grep -c '^FAIL' "$WORK/bad-crd.log")"
  cut -c1-160 "$WORK/bad-crd.log" | sed 's/^FAIL /refused as expected: /' 
  [ "$n" -ge 3 ] || { echo "expected 3 refusals, got $n"; return 1; }
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

runbooks() {
  # Every alert has a runbook_url, at a heading of docs/OPERATIONS.md (GitHub's anchors:
  # lower case, punctuation dropped, spaces to dashes). tests/it/deploy.rs checks the same.
  python3 - <<'PY'
import re, sys, yaml
doc = open("docs/OPERATIONS.md").read()
anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$", doc, re.M)}
bad, n = [], 0
for g in yaml.safe_load(open("deploy/prometheus/rules.yml"))["groups"]:
    for r in g["rules"]:
        url = (r.get("annotations") or {}).get("runbook_url")
        if url is None:
            bad.append(f"{r['alert']}: no runbook_url")
            continue
        n += 1
        path, _, anchor = url.partition("#")
        if path != "docs/OPERATIONS.md" or anchor not in anchors:
            bad.append(f"{r['alert']}: runbook_url {url} is no heading of docs/OPERATIONS.md")
for b in bad:
    print("FAIL: " + b)
print(f"{n} runbook_url annotations, {len(bad)} problems")
sys.exit(1 if bad else 0)
PY
}

cargo_deny() {
  # Licences of every dependency, banned crates (OpenSSL), and crates.io as the only source.
  # `advisories` is not run: it needs the RustSec database from GitHub, which CI cannot reach
  # (docs/OPERATIONS.md, "Releasing", shows where and how to run it).
  run cargo deny --log-level error check licenses bans sources
}

dockerfile() {
  # No docker engine here: static checks of what the image must provide.
  local f=Dockerfile
  grep -Eq '^FROM .* AS build' "$f"                        || { echo "no build stage"; return 1; }
  grep -Eq 'cargo auditable build --release --locked' "$f" || { echo "no cargo auditable build --release --locked"; return 1; }
  grep -Eq 'cargo install cargo-auditable --locked --version [0-9.]+' "$f" || { echo "cargo-auditable not installed at a pinned version"; return 1; }
  # Base images: a digest build arg on every FROM but scratch (empty means the tag).
  local froms
  froms="$(grep -E '^FROM ' "$f")"
  if printf '%s\n' "$froms" | grep -v '^FROM scratch$' | grep -vqE '\$\{BUILD_DIGEST\}'; then
    echo "a FROM without its digest build arg:"; printf '%s\n' "$froms"; return 1
  fi
  # The same layout as scripts/image.sh: its rootfs step, copied onto scratch.
  grep -Eq '^FROM scratch$' "$f"                           || { echo "runtime stage is not FROM scratch"; return 1; }
  grep -Eq 'bash scripts/image.sh rootfs /rootfs target/release/wxdispatch' "$f" \
                                                            || { echo "no image.sh rootfs step"; return 1; }
  grep -Eq '^COPY --from=build /rootfs/ /$' "$f"           || { echo "rootfs not copied onto scratch"; return 1; }
  grep -Eq '^HEALTHCHECK .*CMD \["wxdispatch", "probe"\]$' "$f" || { echo "no HEALTHCHECK wxdispatch probe"; return 1; }
  grep -Eq '^scripts/' .dockerignore && { echo ".dockerignore excludes scripts/ (the build runs image.sh)"; return 1; }
  if grep -Eq '_DIGEST=.+@sha256:' "$f"; then
    echo "note: a default digest is set; make sure it was verified against the registry"
  fi
  for label in title description version revision created licenses; do
    grep -Eq "org\.opencontainers\.image\.$label=" "$f" || { echo "no OCI label $label"; return 1; }
  done
  grep -Eq '^USER 10001(:10001)?$' "$f"                    || { echo "not USER 10001"; return 1; }
  grep -Eq '^EXPOSE 9090 8080$' "$f"                       || { echo "no EXPOSE 9090 8080 (metrics, callback)"; return 1; }
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
  grep -q 'licenses="MIT OR Apache-2.0"' "$f" && [ -f LICENSE-MIT ] && [ -f LICENSE-APACHE ] \
    || { echo "the image's licence label, Cargo.toml and LICENSE-* disagree"; return 1; }
  echo "ok: Dockerfile multi-stage, cargo auditable, --locked, digest arg, FROM scratch with image.sh's rootfs, OCI labels, uid 10001, EXPOSE 9090 8080, HEALTHCHECK probe, ENTRYPOINT/CMD; .dockerignore excludes target/"
}

check "render k8s/: base, base + each component, overlays/example (kustomize and the fallback agree)" render_all
check "manifest cross-checks of every render" cross_check
check "cross-checks refuse KEDA without the Redis limiter" refuses_keda_without_redis
check "cross-checks refuse a Secret in envFrom and an unhashed ConfigMap" refuses_secrets_in_env
check "a changed setting or secret renames its ConfigMap/Secret in the pod template (pods roll)" generated_names_roll
check "wxdispatch check-config accepts every render's ConfigMap and Secret" binary_accepts_renders
check "kubernetes-validate --strict (core kinds of every render, k8s 1.28 and latest bundled)" validate_core
check "KEDA and Prometheus-Operator objects against their projects' schemas (npm @kubernetes-models)" validate_crds
check "the CRD schema check refuses a misspelt field, a wrong type and a bad duration" crd_validator_rejects_a_typo
check "promtool check rules deploy/prometheus/rules.yml" run promtool check rules deploy/prometheus/rules.yml
check "promtool test rules deploy/prometheus/rules.test.yml" run promtool test rules deploy/prometheus/rules.test.yml
check "every runbook_url leads to a heading of docs/OPERATIONS.md" runbooks
check "generated prometheusrule.yaml and grafana-dashboard.yaml match rules.yml and the dashboard" run python3 deploy/tools/gen_prometheusrule.py --check
check "grafana dashboard JSON, provisioning and PromQL syntax" dashboard
check "metric names used are all in deploy/metric-names.txt" metric_names
check "Dockerfile and .dockerignore (static: no Docker engine here)" dockerfile
check "cargo deny check licenses bans sources (deny.toml)" cargo_deny

say "summary"
for n in "${FAILED_NAMES[@]+"${FAILED_NAMES[@]}"}"; do echo "failed: $n"; done
echo "check-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
