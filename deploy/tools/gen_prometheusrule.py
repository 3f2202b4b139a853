#!/usr/bin/env python3
"""Generate the two generated files of k8s/components/prometheus-operator/ from their one
source of truth:

* prometheusrule.yaml      from deploy/prometheus/rules.yml
* grafana-dashboard.yaml   from grafana/dashboards/wxdispatch.json (a ConfigMap labelled
                           grafana_dashboard: "1", which Grafana's dashboard sidecar, as in
                           kube-prometheus-stack, loads)

    python3 deploy/tools/gen_prometheusrule.py          # (re)write both
    python3 deploy/tools/gen_prometheusrule.py --check  # exit 1 if either is out of date

--check compares parsed content (rule groups, dashboard JSON), not text, so formatting
changes in either file do not matter.
"""
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules.yml"
TARGET = ROOT / "k8s/components/prometheus-operator/prometheusrule.yaml"
DASHBOARD = ROOT / "grafana/dashboards/wxdispatch.json"
DASHBOARD_TARGET = ROOT / "k8s/components/prometheus-operator/grafana-dashboard.yaml"
DASHBOARD_HEADER = """\
# GENERATED from grafana/dashboards/wxdispatch.json by deploy/tools/gen_prometheusrule.py.
# Do not edit: change the dashboard, then run
#   python3 deploy/tools/gen_prometheusrule.py
# Grafana's sidecar (kube-prometheus-stack: grafana.sidecar.dashboards.enabled, with
# searchNamespace ALL or this namespace) loads every ConfigMap labelled grafana_dashboard: "1".
"""

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/tools/gen_prometheusrule.py.
# Do not edit: change rules.yml (and rules.test.yml), then run
#   python3 deploy/tools/gen_prometheusrule.py
# scripts/check-deploy.sh fails when this file and rules.yml disagree.
"""

LABELS = {
    "app.kubernetes.io/name": "wxdispatch",
    "app.kubernetes.io/component": "worker",
}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def load_groups():
    doc = yaml.safe_load(RULES.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        sys.exit(f"{RULES}: no top-level 'groups' list")
    return doc["groups"]


def render(groups):
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "wxdispatch", "labels": dict(LABELS)},
        "spec": {"groups": groups},
    }
    body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False)
    return HEADER + body


def render_dashboard():
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "wxdispatch-dashboard",
                     "labels": {**LABELS, "grafana_dashboard": "1"}},
        "data": {"wxdispatch.json": DASHBOARD.read_text()},
    }
    return DASHBOARD_HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)


def check_dashboard():
    if not DASHBOARD_TARGET.exists():
        print(f"FAIL: {DASHBOARD_TARGET.relative_to(ROOT)} missing; run {Path(__file__).relative_to(ROOT)}")
        return 1
    doc = yaml.safe_load(DASHBOARD_TARGET.read_text())
    got = json.loads((doc.get("data") or {}).get("wxdispatch.json") or "null")
    labels = (doc.get("metadata") or {}).get("labels") or {}
    if got != json.loads(DASHBOARD.read_text()) or labels.get("grafana_dashboard") != "1":
        print(f"FAIL: {DASHBOARD_TARGET.relative_to(ROOT)} differs from {DASHBOARD.relative_to(ROOT)} "
              "(or lacks the grafana_dashboard label); regenerate with: "
              "python3 deploy/tools/gen_prometheusrule.py")
        return 1
    print(f"ok: {DASHBOARD_TARGET.relative_to(ROOT)} matches {DASHBOARD.relative_to(ROOT)}")
    return 0


def main(argv):
    groups = load_groups()
    if "--check" in argv:
        if check_dashboard():
            return 1
        if not TARGET.exists():
            print(f"FAIL: {TARGET.relative_to(ROOT)} missing; run {Path(__file__).relative_to(ROOT)}")
            return 1
        doc = yaml.safe_load(TARGET.read_text())
        problems = []
        if doc.get("apiVersion") != "monitoring.coreos.com/v1" or doc.get("kind") != "PrometheusRule":
            problems.append("apiVersion/kind is not monitoring.coreos.com/v1 PrometheusRule")
        if (doc.get("spec") or {}).get("groups") != groups:
            problems.append("spec.groups differs from deploy/prometheus/rules.yml groups")
        if problems:
            for p in problems:
                print(f"FAIL: k8s/components/prometheus-operator/prometheusrule.yaml: {p}")
            print("      regenerate with: python3 deploy/tools/gen_prometheusrule.py")
            return 1
        n = sum(len(g.get("rules", [])) for g in groups)
        print(f"ok: k8s/components/prometheus-operator/prometheusrule.yaml matches deploy/prometheus/rules.yml ({n} rules)")
        return 0
    TARGET.write_text(render(groups))
    print(f"wrote {TARGET.relative_to(ROOT)}")
    DASHBOARD_TARGET.write_text(render_dashboard())
    print(f"wrote {DASHBOARD_TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
