#!/usr/bin/env python3
"""Structural checks of grafana/: the dashboard JSON and the provisioning YAML.

    python3 deploy/tools/check_dashboard.py [--promql-rules OUT.yml]

With --promql-rules, every panel query is also written as a recording rule (Grafana's
$__rate_interval / $__interval / $appid substituted) so that `promtool check rules OUT.yml`
parses all dashboard PromQL.
"""
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASH = ROOT / "grafana/dashboards/wxdispatch.json"
REQUIRED_PANELS = [
    "Throughput by status", "WeChat errcodes over time", "Send latency p50 / p95 / p99",
    "Retries by reason", "Token refreshes by result", "Quota pauses per account",
    "In-flight sends", "Receipts by status", "Dead-letter rate", "Account stopped",
    "AMQP connected",
    # Issue 17: the backlog, job age and the process.
    "Jobs backlog", "Oldest job at pickup (p99)", "Ready messages by queue",
    "Unacked messages by queue", "Publish rate by queue", "Deliver rate by queue",
    "Job latency, publish to outcome", "CPU per worker", "Resident memory per worker",
]
# Grafana variables and what the dashboard queries substitute for them when checked.
SUBSTITUTE = {"$__rate_interval": "5m", "$__interval": "1m", "$appid": ".*",
              "$namespace": ".*", "$job": ".*", "${queue_prefix}": "wxdispatch"}
SCOPE = 'namespace=~"$namespace",job=~"$job"'
problems = []


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels") or [])


def main():
    d = json.loads(DASH.read_text())
    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("variable datasource must be type datasource, query prometheus")
    app = variables.get("appid") or {}
    q = app.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if q != f"label_values(wxdispatch_jobs_total{{{SCOPE}}}, appid)":
        problems.append("variable appid must query label_values(wxdispatch_jobs_total{...}, appid)")
    for name in ("appid", "namespace", "job"):
        v = variables.get(name) or {}
        if not (v.get("multi") and v.get("includeAll") and v.get("allValue") == ".*"):
            problems.append(f"variable {name} must be multi-value with All (.*)")
    if (variables.get("queue_prefix") or {}).get("query") != "wxdispatch":
        problems.append("variable queue_prefix must default to wxdispatch")
    inputs = d.get("__inputs") or []
    if not any(i.get("type") == "datasource" and i.get("pluginId") == "prometheus" for i in inputs):
        problems.append("__inputs must declare the Prometheus datasource (for Grafana's import)")
    titles = set()
    ids = set()
    for p in walk(d.get("panels") or []):
        titles.add(p.get("title"))
        if p.get("id") in ids:
            problems.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        for obj in [p] + list(p.get("targets") or []):
            if (obj.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {p.get('title')!r}: datasource must be ${{datasource}}")
        for t in p.get("targets") or []:
            if not t.get("expr"):
                problems.append(f"panel {p.get('title')!r}: target without expr")
            if re.search(r"\bappid\b", t.get("expr", "")) and "$appid" not in t["expr"] \
                    and "by (appid)" not in t["expr"]:
                problems.append(f"panel {p.get('title')!r}: appid used without the $appid filter")
            # Every worker series is scoped to the chosen namespace and job.
            for m in re.finditer(r"\b(?:wxdispatch|process)_[a-z0-9_]+(\{[^}]*\})?", t.get("expr", "")):
                if SCOPE not in (m.group(1) or ""):
                    problems.append(f"panel {p.get('title')!r}: {m.group(0)} lacks {SCOPE}")
    for t in REQUIRED_PANELS:
        if t not in titles:
            problems.append(f"missing panel {t!r}")
    for f in sorted((ROOT / "grafana/provisioning").rglob("*.yml")):
        doc = yaml.safe_load(f.read_text())
        if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
            problems.append(f"{f.relative_to(ROOT)}: not a Grafana provisioning file (apiVersion: 1)")
    if "--promql-rules" in sys.argv:
        out = Path(sys.argv[sys.argv.index("--promql-rules") + 1])
        rules = []
        for p in walk(d.get("panels") or []):
            for t in p.get("targets") or []:
                expr = t.get("expr") or ""
                for k in sorted(SUBSTITUTE, key=len, reverse=True):
                    expr = expr.replace(k, SUBSTITUTE[k])
                if "$" in expr:
                    problems.append(f"panel {p.get('title')!r}: unknown variable in {expr!r}")
                rules.append({"record": f"dashboard:panel_{p.get('id')}:{t.get('refId')}", "expr": expr})
        out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]},
                                      sort_keys=False, width=1000))
        print(f"  wrote {len(rules)} dashboard queries to {out} for promtool")
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    print(f"ok: dashboard has {len(ids)} panels, datasource+appid variables; provisioning files parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
