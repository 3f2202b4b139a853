#!/usr/bin/env python3
"""Print every wxdispatch_* metric base name referenced by grafana/ and
deploy/prometheus/rules.yml, one per line, sorted.

Histogram series suffixes (_bucket, _sum, _count) are stripped, so the output is comparable
with deploy/metric-names.txt (the names the binary exports) and with the live /metrics output.
Every occurrence in those files counts, not only query expressions, so a stale name in a
description or legend is caught too.

    python3 scripts/extract-metric-names.py [--where]   # --where: also print file:line
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"(?<![A-Za-z0-9_])wxdispatch_[a-z0-9_]*[a-z0-9]")
SUFFIXES = ("_bucket", "_sum", "_count")


def sources():
    files = [ROOT / "deploy/prometheus/rules.yml"]
    grafana = ROOT / "grafana"
    if grafana.is_dir():
        files += sorted(p for p in grafana.rglob("*")
                        if p.is_file() and p.suffix in (".json", ".yml", ".yaml"))
    return files


def base_name(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def main():
    where = "--where" in sys.argv[1:]
    found = {}
    for f in sources():
        if not f.is_file():
            print(f"extract-metric-names: missing {f.relative_to(ROOT)}", file=sys.stderr)
            return 1
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            for m in NAME.finditer(line):
                found.setdefault(base_name(m.group(0)), []).append(f"{f.relative_to(ROOT)}:{lineno}")
    for name in sorted(found):
        print(f"{name}\t{found[name][0]}" if where else name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
