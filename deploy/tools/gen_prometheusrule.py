#!/usr/bin/env python3
"""Generate k8s/components/prometheus-operator/prometheusrule.yaml from deploy/prometheus/rules.yml (the one source of truth).

    python3 deploy/tools/gen_prometheusrule.py          # (re)write k8s/components/prometheus-operator/prometheusrule.yaml
    python3 deploy/tools/gen_prometheusrule.py --check  # exit 1 if it is out of date

--check compares the parsed rule groups (not the text), so formatting changes in either file
do not matter, only the rules do.
"""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules.yml"
TARGET = ROOT / "k8s/components/prometheus-operator/prometheusrule.yaml"

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


def main(argv):
    groups = load_groups()
    if "--check" in argv:
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
