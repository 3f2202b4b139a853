#!/usr/bin/env python3
"""Checks of a rendered k8s/ kustomization that a schema cannot express, and the split of the
documents for the schema validators.

    python3 deploy/tools/check_manifests.py --render base|keda|...|overlay RENDERED.yaml OUTDIR \
        [EXAMPLE.yaml ...]

* Core kinds (Deployment, Service, ConfigMap, Secret, PodDisruptionBudget, NetworkPolicy,
  Namespace, Ingress, HorizontalPodAutoscaler) are written one per file to OUTDIR/core/ for
  `kubernetes-validate --strict` (the caller runs it).
* CRD kinds (KEDA ScaledObject / TriggerAuthentication, Prometheus Operator ServiceMonitor /
  PrometheusRule) are written one per file as JSON to OUTDIR/crd/ for
  deploy/tools/crd-validate/validate.mjs (those projects' own schemas; the caller runs it),
  and their cross-references are checked here. Any other kind is an error.
* What each render must be: the base has core kinds only (it applies on a bare cluster) and a
  fixed replica count; with KEDA the Deployment has no `replicas` and the shared Redis limiter
  is on; the overlay carries a namespace, the `release` label and an Ingress for the callback
  path only.
* Cross-references: selectors match the pod labels, referenced ConfigMaps/Secrets/ports exist,
  the grace period outlasts the drain timeout, the hardening settings are present, ConfigMap
  keys are known to the binary (as `wxdispatch check-config --list-keys` prints them), and so on.

Exits 1 listing every problem found.
"""
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

CORE = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("networking.k8s.io/v1", "Ingress"),
}
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
BASE_KINDS = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
              "ServiceAccount"}
# The kinds each render must hold (exactly, apart from the overlay's Namespace and Ingress).
RENDERS = {
    "base": BASE_KINDS,
    "redis-limiter": BASE_KINDS,
    "keda": BASE_KINDS | {"ScaledObject", "TriggerAuthentication"},
    "prometheus-operator": BASE_KINDS | {"ServiceMonitor", "PrometheusRule"},
    "overlay": BASE_KINDS | {"Namespace", "Ingress", "ScaledObject",
                                            "TriggerAuthentication", "ServiceMonitor",
                                            "PrometheusRule"},
}
SECRETS_DIR = "/etc/wxdispatch/secrets"
# The Secret's files: the worker's, through the ConfigMap's *_FILE keys, and KEDA's own.
SECRET_FILES = {"WXD_AMQP_URL_FILE": "amqp-url", "WXD_SECRET_FILE": "appsecret",
                "WXD_CALLBACK_TOKEN_FILE": "callback-token",
                "WXD_CALLBACK_AES_KEY_FILE": "callback-aes-key"}
KEDA_KEY = "keda-amqp-host"
# Objects kustomize generates, so their names end in a hash of their content.
GENERATED = {("ConfigMap", "wxdispatch-config"), ("ConfigMap", "wxdispatch-accounts"),
             ("Secret", "wxdispatch-secrets")}
HASHED = re.compile(r"^(?P<base>.+)-[a-z0-9]{10}$")
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component")
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
HTTP_PORT, CALLBACK_PORT = 9090, 8080
# Never in the environment: the values are files (SECRET_FILES).
SECRET_KEYS = {"WXD_AMQP_URL", "WXD_SECRET", "WXD_CALLBACK_TOKEN", "WXD_CALLBACK_AES_KEY"}
CONFIG_KEYS = {
    "WXD_JOBS_QUEUE", "WXD_OUTCOMES_EXCHANGE", "WXD_OUTCOMES_QUEUE", "WXD_DEAD_QUEUE",
    "WXD_API_BASE", "WXD_APPID", "WXD_TOKEN_MODE", "WXD_RATE_PER_SEC", "WXD_HTTP_ADDR",
    "WXD_CALLBACK_PATH", "WXD_CONCURRENCY", "WXD_PREFETCH", "WXD_MAX_ATTEMPTS",
    "WXD_QUOTA_PROBE_SECS", "WXD_DRAIN_TIMEOUT_SECS", "WXD_LOG_FORMAT", "WXD_CALLBACK_ADDR",
    "WXD_CONFIG",
} | set(SECRET_FILES)
META_KEYS = {"WXD_CONFIG", "WXD_SECRET_FILE", "WXD_CALLBACK_TOKEN_FILE",
             "WXD_CALLBACK_AES_KEY_FILE", "WXD_AMQP_URL_FILE", "WXD_REDIS_URL_FILE"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

problems = []


def fail(msg):
    problems.append(msg)


def get(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        elif isinstance(obj, list) and isinstance(p, int) and -len(obj) <= p < len(obj):
            obj = obj[p]
        else:
            return default
    return obj


def subset(small, big):
    return isinstance(small, dict) and bool(small) and all(
        (big or {}).get(k) == v for k, v in small.items())


def known_binary_keys():
    """WXD_<KEY> names accepted by the binary, as the binary itself lists them
    (`wxdispatch check-config --list-keys`). WXD_BIN names the binary (check-deploy.sh builds
    it first); without it, target/debug/wxdispatch is used if it exists."""
    binary = os.environ.get("WXD_BIN") or str(ROOT / "target/debug/wxdispatch")
    if not Path(binary).is_file():
        fail(f"{binary}: no wxdispatch binary to list its keys (build it, or set WXD_BIN)")
        return None
    out = subprocess.run([binary, "check-config", "--list-keys"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        fail(f"{binary} check-config --list-keys failed: {out.stderr.strip()}")
        return None
    keys = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    # --list-keys names the file's keys; the binary also takes these variables, which are no
    # file key (binary_accepts_renders in check-deploy.sh has the binary load every render).
    return keys | META_KEYS if keys else None


def load(path):
    try:
        return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: not valid YAML: {e}")
        return []


def main(argv):
    if len(argv) < 4 or argv[0] != "--render" or argv[1] not in RENDERS:
        sys.exit(__doc__)
    render, rendered, outdir, examples = argv[1], argv[2], Path(argv[3]), argv[4:]
    core_dir, crd_dir = outdir / "core", outdir / "crd"
    for d in (core_dir, crd_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in list(d.glob("*.yaml")) + list(d.glob("*.json")):
            old.unlink()

    base = load(rendered)
    extra = []
    for ex in examples:
        extra.extend((ex, d) for d in load(ex))

    by_kind = {}
    written = 0
    for origin, doc in [("base", d) for d in base] + extra:
        if not isinstance(doc, dict):
            fail(f"{origin}: document is not a mapping")
            continue
        av, kind = doc.get("apiVersion"), doc.get("kind")
        name = get(doc, "metadata", "name")
        label = f"{origin}: {kind}/{name}"
        if not isinstance(name, str) or not DNS1123.match(name) or len(name) > 63:
            fail(f"{label}: metadata.name missing or not a DNS-1123 label")
        if (av, kind) in CORE:
            written += 1
            path = core_dir / f"{written:02d}-{str(kind).lower()}-{name}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        elif (av, kind) in CRDS:
            written += 1
            path = crd_dir / f"{written:02d}-{str(kind).lower()}-{name}.json"
            path.write_text(json.dumps(doc))
        else:
            fail(f"{label}: unexpected apiVersion/kind {av}/{kind}")
        if origin == "base":
            by_kind.setdefault(kind, []).append(doc)

    if set(by_kind) != RENDERS[render]:
        fail(f"{render}: kinds {sorted(by_kind)}, expected {sorted(RENDERS[render])}")

    def one(kind):
        docs = by_kind.get(kind) or []
        return docs[0] if docs else {}

    examples_by_kind = {}
    for _, d in extra:
        if isinstance(d, dict):
            examples_by_kind.setdefault(d.get("kind"), []).append(d)

    # ---- Generated names: <name>-<hash>, and the labels on every object
    def unhashed(kind, name):
        m = HASHED.match(name or "")
        return m.group("base") if m and (kind, m.group("base")) in GENERATED else name
    generated = {}
    for kind in ("ConfigMap", "Secret"):
        for d in by_kind.get(kind, []):
            name = get(d, "metadata", "name")
            if unhashed(kind, name) != name:
                generated[(kind, unhashed(kind, name))] = name
    for kind, name in sorted(GENERATED - set(generated)):
        fail(f"{kind} {name}: missing, or its name has no content hash (use a kustomize "
             "generator, so that a change rolls the pods)")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    for kind, docs in by_kind.items():
        for d in docs:
            labels = get(d, "metadata", "labels", default={}) or {}
            if kind == "Namespace":
                continue
            missing = [k for k in LABELS if k not in labels]
            if missing:
                fail(f"{kind}/{get(d, 'metadata', 'name')}: labels {missing} missing")
            elif labels["app.kubernetes.io/version"] != version:
                fail(f"{kind}/{get(d, 'metadata', 'name')}: app.kubernetes.io/version "
                     f"{labels['app.kubernetes.io/version']} is not Cargo.toml's {version}")

    # ---- ConfigMaps
    configmaps = {unhashed("ConfigMap", get(c, "metadata", "name")): c
                  for c in by_kind.get("ConfigMap", [])}
    cfg = configmaps.get("wxdispatch-config", {})
    data = cfg.get("data") or {}
    if not cfg:
        fail("ConfigMap wxdispatch-config missing")
    for k, v in data.items():
        if not isinstance(v, str):
            fail(f"ConfigMap wxdispatch-config: {k} must be a string, got {type(v).__name__}")
    if set(data) & SECRET_KEYS:
        fail(f"ConfigMap wxdispatch-config holds secret keys {sorted(set(data) & SECRET_KEYS)}")
    if CONFIG_KEYS - set(data):
        fail(f"ConfigMap wxdispatch-config lacks {sorted(CONFIG_KEYS - set(data))}")
    if data.get("WXD_LOG_FORMAT") != "json":
        fail("ConfigMap: WXD_LOG_FORMAT must be json")
    redis = "WXD_REDIS_URL" in data
    if redis and not str(data["WXD_REDIS_URL"]).startswith(("redis://", "rediss://")):
        fail("ConfigMap: WXD_REDIS_URL must be a redis:// or rediss:// URL")
    if render in ("redis-limiter", "overlay") and not redis:
        fail(f"{render}: the shared limiter (WXD_REDIS_URL) is off")
    if render in ("base", "prometheus-operator") and redis:
        fail(f"{render}: WXD_REDIS_URL belongs in components/redis-limiter, not the base")
    if data.get("WXD_TOKEN_MODE") not in ("stable", "classic"):
        fail("ConfigMap: WXD_TOKEN_MODE must be stable or classic")
    if data.get("WXD_HTTP_ADDR", "").rsplit(":", 1)[-1] != str(HTTP_PORT):
        fail(f"ConfigMap: WXD_HTTP_ADDR must listen on port {HTTP_PORT}")
    if data.get("WXD_CALLBACK_ADDR", "").rsplit(":", 1)[-1] != str(CALLBACK_PORT):
        fail(f"ConfigMap: WXD_CALLBACK_ADDR must listen on port {CALLBACK_PORT} (the callback's own port)")
    known = known_binary_keys()
    if known is not None:
        unknown = sorted(k for k in data if k.startswith("WXD_") and k not in known)
        if unknown:
            fail(f"ConfigMap: keys unknown to the binary (check-config --list-keys): {unknown}")
        print(f"  ConfigMap keys all known to the binary ({len(known)} keys)")
    try:
        drain = int(data.get("WXD_DRAIN_TIMEOUT_SECS", "30"))
        expected_replicas = int(data.get("WXD_EXPECTED_REPLICAS", "0"))
    except ValueError:
        fail("ConfigMap: WXD_DRAIN_TIMEOUT_SECS / WXD_EXPECTED_REPLICAS must be integers")
        drain, expected_replicas = 30, 0

    # ---- Secret: files, named by the ConfigMap's *_FILE keys (placeholders in every render
    # CI makes: the base's, and the copies check-deploy.sh puts beside the overlay)
    secret_keys = set()
    want_files = set(SECRET_FILES.values()) | {KEDA_KEY}
    for key, file in SECRET_FILES.items():
        if data.get(key) != f"{SECRETS_DIR}/{file}":
            fail(f"ConfigMap: {key} must be {SECRETS_DIR}/{file} (the Secret's file)")
    for s in by_kind.get("Secret", []):
        if s.get("stringData"):
            fail("Secret: stringData (use the generator's files)")
        sd = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        secret_keys |= set(sd)
        if set(sd) != want_files:
            fail(f"Secret: files {sorted(sd)} != {sorted(want_files)}")
        for k, v in sd.items():
            if k == "callback-aes-key":
                try:
                    key = base64.b64decode(v + "=", validate=True)
                except ValueError:
                    key = b""
                if len(v) != 43 or len(key) != 32 or b"CHANGE_ME" not in key:
                    fail("Secret: callback-aes-key placeholder must be 43 characters of base64 "
                         "(32 bytes) spelling CHANGE_ME")
            elif "CHANGE_ME" not in v:
                fail(f"Secret: {k} must hold a CHANGE_ME placeholder, not a value")
        if "," in sd.get(KEDA_KEY, ""):
            fail(f"Secret: {KEDA_KEY} must be ONE node's URL (KEDA takes no list)")
    secret_names = {get(s, "metadata", "name") for s in by_kind.get("Secret", [])}
    if len(secret_names) != 1:
        fail(f"expected one Secret, got {sorted(secret_names)}")

    # ---- Deployment
    dep = one("Deployment")
    pod = get(dep, "spec", "template", "spec", default={})
    pod_labels = get(dep, "spec", "template", "metadata", "labels", default={})
    if not subset(get(dep, "spec", "selector", "matchLabels"), pod_labels):
        fail("Deployment: selector does not match the pod template labels")
    containers = pod.get("containers") or []
    c = containers[0] if containers else {}
    grace = pod.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or grace <= drain:
        fail(f"Deployment: terminationGracePeriodSeconds ({grace}) must exceed "
             f"WXD_DRAIN_TIMEOUT_SECS ({drain})")
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    for what, ok in [
        ("runAsNonRoot", psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot", True) is True),
        ("runAsUser 10001", psc.get("runAsUser") == 10001 and csc.get("runAsUser", 10001) == 10001),
        ("seccompProfile RuntimeDefault",
         get(psc, "seccompProfile", "type") == "RuntimeDefault"
         or get(csc, "seccompProfile", "type") == "RuntimeDefault"),
        ("readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem") is True),
        ("allowPrivilegeEscalation false", csc.get("allowPrivilegeEscalation") is False),
        ("capabilities drop ALL", "ALL" in (get(csc, "capabilities", "drop") or [])),
    ]:
        if not ok:
            fail(f"Deployment: securityContext lacks {what}")
    if pod.get("enableServiceLinks") is not False:
        fail("Deployment: enableServiceLinks must be false (a Service named wxd-* would inject "
             "WXD_* variables the binary rejects)")
    if c.get("args") != ["run"]:
        fail("Deployment: container args must be [\"run\"]")
    ports = {p.get("name"): p for p in c.get("ports") or []}
    if get(ports, "http", "containerPort") != HTTP_PORT:
        fail(f"Deployment: container port {HTTP_PORT} named http missing")
    if get(ports, "callback", "containerPort") != CALLBACK_PORT:
        fail(f"Deployment: container port {CALLBACK_PORT} named callback missing")
    has_keda = "ScaledObject" in by_kind
    if has_keda and "replicas" in (dep.get("spec") or {}):
        fail("Deployment: sets spec.replicas while KEDA owns the count; every apply would "
             "reset it (components/keda must remove it)")
    if not has_keda and not isinstance(get(dep, "spec", "replicas"), int):
        fail("Deployment: without KEDA it needs a fixed spec.replicas")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        if get(c, probe, "httpGet", "path") != path or get(c, probe, "httpGet", "port") not in ("http", 9090):
            fail(f"Deployment: {probe} must GET {path} on port http")
    for ic in pod.get("initContainers") or []:
        # The check-config initContainer must check the very image and settings that run.
        if ic.get("args") == ["check-config"]:
            if (ic.get("image") != c.get("image") or ic.get("envFrom") != c.get("envFrom")
                    or ic.get("volumeMounts") != c.get("volumeMounts")):
                fail("Deployment: the check-config initContainer must use the worker's image, "
                     "envFrom and volumeMounts")
    if render == "overlay":
        for cont in containers + (pod.get("initContainers") or []):
            if not re.search(r"@sha256:[0-9a-f]{64}$", cont.get("image", "")):
                fail(f"Deployment: overlay image {cont.get('image')} is not pinned by digest")
    sa = get(pod, "serviceAccountName")
    sas = {get(d, "metadata", "name"): d for d in by_kind.get("ServiceAccount", [])}
    if sa not in sas:
        fail(f"Deployment: serviceAccountName {sa} names no ServiceAccount of the render")
    elif sas[sa].get("automountServiceAccountToken") is not False \
            or pod.get("automountServiceAccountToken") is not False:
        fail("ServiceAccount and pod: automountServiceAccountToken must be false")
    res = c.get("resources") or {}
    if get(res, "requests", "cpu") is None or get(res, "limits", "memory") is None:
        fail("Deployment: resources requests/limits missing")
    # Nothing secret in the environment: envFrom names the settings' ConfigMap only, env has no
    # secret key and no secretKeyRef; the Secret is a volume mounted where the *_FILE keys point.
    for cont in containers + (pod.get("initContainers") or []):
        env_from = cont.get("envFrom") or []
        cm_refs = [get(e, "configMapRef", "name") for e in env_from if "configMapRef" in e]
        if any("secretRef" in e for e in env_from):
            fail(f"Deployment: container {cont.get('name')}: envFrom a Secret puts secrets in "
                 "the environment (mount it and use WXD_*_FILE)")
        if cm_refs != [generated.get(("ConfigMap", "wxdispatch-config"))]:
            fail(f"Deployment: container {cont.get('name')}: envFrom must name the generated "
                 f"wxdispatch-config, got {cm_refs}")
        for e in cont.get("env") or []:
            if e.get("name") in SECRET_KEYS or get(e, "valueFrom", "secretKeyRef") \
                    or str(e.get("name", "")).startswith("WXD_SECRET_"):
                fail(f"Deployment: container {cont.get('name')}: env {e.get('name')} is a "
                     "secret in the environment")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    secret_volumes = [n for n, v in volumes.items() if "secret" in v]
    if [get(volumes[n], "secret", "secretName") for n in secret_volumes] != \
            [generated.get(("Secret", "wxdispatch-secrets"))]:
        fail("Deployment: the generated Secret must be mounted, as one volume")
    mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
    if secret_volumes and mounts.get(SECRETS_DIR) != secret_volumes[0]:
        fail(f"Deployment: the Secret must be mounted at {SECRETS_DIR}")
    accounts_dir = str(Path(data.get("WXD_CONFIG", "/")).parent)
    if get(volumes.get(mounts.get(accounts_dir), {}), "configMap", "name") != \
            generated.get(("ConfigMap", "wxdispatch-accounts")):
        fail(f"Deployment: the accounts ConfigMap must be mounted at {accounts_dir} (WXD_CONFIG)")
    for e in c.get("env") or []:
        if str(e.get("name", "")).startswith("WXD_") and known and e["name"] not in known \
                and e["name"] not in ("WXD_CONFIG",) and not e["name"].startswith("WXD_SECRET"):
            fail(f"Deployment: env {e['name']} unknown to the binary")
    for v in pod.get("volumes") or []:
        ref = get(v, "configMap", "name")
        if ref and unhashed("ConfigMap", ref) not in configmaps:
            fail(f"Deployment: volume {v.get('name')} references missing ConfigMap {ref}")

    # ---- Service
    svc = one("Service")
    if not subset(get(svc, "spec", "selector"), pod_labels):
        fail("Service: selector does not match the pod labels")
    sports = {p.get("name"): p for p in get(svc, "spec", "ports", default=[])}
    if get(sports, "http", "port") != HTTP_PORT or get(sports, "http", "targetPort") not in ("http", HTTP_PORT):
        fail(f"Service: port {HTTP_PORT} named http (targetPort http) missing")
    if get(sports, "callback", "targetPort") not in ("callback", CALLBACK_PORT):
        fail("Service: port named callback (targetPort callback) missing")

    # ---- PodDisruptionBudget
    pdb = one("PodDisruptionBudget")
    if not subset(get(pdb, "spec", "selector", "matchLabels"), pod_labels):
        fail("PodDisruptionBudget: selector does not match the pod labels")
    if get(pdb, "spec", "unhealthyPodEvictionPolicy") != "AlwaysAllow":
        fail("PodDisruptionBudget: unhealthyPodEvictionPolicy must be AlwaysAllow (readiness "
             "follows the broker: a broker outage must not block node drains)")

    # ---- NetworkPolicy
    np = one("NetworkPolicy")
    if not subset(get(np, "spec", "podSelector", "matchLabels"), pod_labels):
        fail("NetworkPolicy: podSelector does not match the pod labels")
    # Each ingress port is open to one namespace only: the callback to the ingress controller,
    # the metrics to Prometheus. A rule without `from` would open its ports to every pod.
    allowed_from = {CALLBACK_PORT: INGRESS_NAMESPACE, HTTP_PORT: MONITORING_NAMESPACE}
    opened = {}
    for r in get(np, "spec", "ingress", default=[]):
        froms = r.get("from") or []
        namespaces = {get(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name")
                      for f in froms}
        if not froms or None in namespaces or any(set(f) != {"namespaceSelector"} for f in froms):
            fail(f"NetworkPolicy: ingress rule {r} must name its source namespaces")
        for p in r.get("ports") or []:
            opened.setdefault(p.get("port"), set()).update(namespaces)
        if not r.get("ports"):
            fail(f"NetworkPolicy: ingress rule {r} opens every port")
    for port, ns in allowed_from.items():
        if opened.get(port) != {ns}:
            fail(f"NetworkPolicy: port {port} must be open to namespace {ns} only, "
                 f"got {sorted(map(str, opened.get(port, set())))}")
    if set(opened) - set(allowed_from):
        fail(f"NetworkPolicy: unexpected ingress ports {sorted(set(opened) - set(allowed_from))}")
    egress_ports = {(p.get("protocol", "TCP"), p.get("port"))
                    for r in get(np, "spec", "egress", default=[]) for p in r.get("ports") or []}
    for need in [("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671), ("TCP", 6379), ("TCP", 443)]:
        if need not in egress_ports:
            fail(f"NetworkPolicy: egress {need[0]} {need[1]} missing")
    if set(get(np, "spec", "policyTypes", default=[])) != {"Ingress", "Egress"}:
        fail("NetworkPolicy: policyTypes must be Ingress and Egress")

    # ---- KEDA (schema: deploy/tools/crd-validate; here the cross-references)
    so = one("ScaledObject")
    if has_keda and not redis:
        fail("ScaledObject: KEDA without the shared Redis limiter (components/redis-limiter) "
             "would multiply every account's rate by the replica count")
    ta_names = {get(t, "metadata", "name") for t in by_kind.get("TriggerAuthentication", [])}
    if has_keda and get(so, "spec", "scaleTargetRef", "name") != get(dep, "metadata", "name"):
        fail("ScaledObject: scaleTargetRef.name is not the Deployment")
    mn, mx = get(so, "spec", "minReplicaCount"), get(so, "spec", "maxReplicaCount")
    if not has_keda:
        pass
    elif not (isinstance(mn, int) and isinstance(mx, int) and 1 <= mn <= mx):
        fail("ScaledObject: need integer 1 <= minReplicaCount <= maxReplicaCount")
    elif mx != expected_replicas:
        fail(f"ScaledObject: maxReplicaCount ({mx}) != WXD_EXPECTED_REPLICAS ({expected_replicas})")
    rabbit = [t for t in get(so, "spec", "triggers", default=[]) if t.get("type") == "rabbitmq"]
    if has_keda and not rabbit:
        fail("ScaledObject: no rabbitmq trigger")
    for t in rabbit:
        md = t.get("metadata") or {}
        if md.get("queueName") != data.get("WXD_JOBS_QUEUE", "wxdispatch.jobs"):
            fail("ScaledObject: rabbitmq trigger queueName must be the jobs queue")
        if md.get("mode") not in ("QueueLength", "MessageRate") or not isinstance(md.get("value"), str):
            fail("ScaledObject: rabbitmq trigger needs mode QueueLength|MessageRate and a string value")
        if get(t, "authenticationRef", "name") not in ta_names:
            fail("ScaledObject: authenticationRef names no TriggerAuthentication in the base")
    for ta in by_kind.get("TriggerAuthentication", []):
        for ref in get(ta, "spec", "secretTargetRef", default=[]):
            if ref.get("name") not in secret_names or ref.get("key") != KEDA_KEY:
                fail(f"TriggerAuthentication: secretTargetRef {ref} must name the Secret's own "
                     f"single-node key {KEDA_KEY} (WXD_AMQP_URL may be a list or a file)")

    # ---- Prometheus Operator (schema: deploy/tools/crd-validate; here the cross-references)
    has_po = "ServiceMonitor" in by_kind
    sm = one("ServiceMonitor")
    if has_po and not subset(get(sm, "spec", "selector", "matchLabels"), get(svc, "metadata", "labels")):
        fail("ServiceMonitor: selector does not match the Service labels")
    for ep in get(sm, "spec", "endpoints", default=[]):
        if ep.get("port") != "http" or ep.get("path", "/metrics") != "/metrics":
            fail("ServiceMonitor: endpoint must scrape /metrics on the Service port http")
    pr = one("PrometheusRule")
    for g in get(pr, "spec", "groups", default=[]):
        for r in g.get("rules") or []:
            if not r.get("expr") or not (r.get("alert") or r.get("record")):
                fail(f"PrometheusRule: rule without expr/alert in group {g.get('name')}")
    if has_po and not get(pr, "spec", "groups"):
        fail("PrometheusRule: no groups")
    if render == "overlay":
        for kind, obj in (("ServiceMonitor", sm), ("PrometheusRule", pr)):
            if not get(obj, "metadata", "labels", "release"):
                fail(f"{kind}: no `release` label; kube-prometheus-stack would not select it")

    # ---- Overlay: namespace, and an Ingress that exposes the callback path only
    if render == "overlay":
        ns_names = {get(n, "metadata", "name") for n in by_kind.get("Namespace", [])}
        for kind, docs in by_kind.items():
            for d in docs:
                if kind != "Namespace" and get(d, "metadata", "namespace") not in ns_names:
                    fail(f"{kind}/{get(d, 'metadata', 'name')}: not in the overlay's namespace")
        callback_path = data.get("WXD_CALLBACK_PATH")
        for ing in by_kind.get("Ingress", []):
            paths = [p for r in get(ing, "spec", "rules", default=[])
                     for p in get(r, "http", "paths", default=[])]
            if get(ing, "spec", "defaultBackend") is not None or not paths:
                fail("Ingress: no defaultBackend allowed, and at least one path")
            for p in paths:
                backend = get(p, "backend", "service", default={})
                if (p.get("path") != callback_path or p.get("pathType") != "Exact"
                        or backend.get("name") != get(svc, "metadata", "name")
                        or get(backend, "port", "name", default=get(backend, "port", "number"))
                        not in ("callback", CALLBACK_PORT)):
                    fail(f"Ingress: path {p} must be exactly {callback_path} to the Service's "
                         "callback port")

    # ---- HPA example, if any
    for h in examples_by_kind.get("HorizontalPodAutoscaler", []):
        if get(h, "spec", "scaleTargetRef", "name") != get(dep, "metadata", "name"):
            fail("HPA example: scaleTargetRef.name is not the Deployment")

    print(f"  {render}: {len(base)} rendered documents, {len(extra)} example documents; "
          f"{written} documents written to {core_dir} and {crd_dir}")
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    print("ok: manifest cross-checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
