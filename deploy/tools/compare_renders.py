#!/usr/bin/env python3
"""Compare two renders of the kustomization as sets of objects (order and key order ignored).

    python3 deploy/tools/compare_renders.py KUSTOMIZE.yaml FALLBACK.yaml

Keeps deploy/tools/render_kustomize.py (the no-kustomize fallback) honest: on machines that
have kubectl/kustomize, its output must equal theirs.
"""
import json
import sys

import yaml


def objects(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    return {(d.get("kind"), d.get("metadata", {}).get("name")): json.dumps(d, sort_keys=True) for d in docs}


def main():
    a, b = objects(sys.argv[1]), objects(sys.argv[2])
    bad = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
    if bad:
        for k in bad:
            print(f"FAIL: renders differ for {k[0]}/{k[1]}")
        return 1
    print(f"ok: fallback renderer output equals kustomize output ({len(a)} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
