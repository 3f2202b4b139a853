#!/usr/bin/env python3
"""Minimal kustomize renderer, the fallback of scripts/check-deploy.sh when neither
`kubectl kustomize` nor `kustomize` is installed.

It supports only what k8s/kustomization.yaml uses: `resources:` naming YAML files or
directories that hold their own kustomization.yaml. Anything else (patches, images,
namespace, generators, ...) is refused with exit code 2 rather than rendered wrongly.

    python3 deploy/tools/render_kustomize.py k8s > rendered.yaml
"""
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources"}


def render(directory: Path):
    kfile = None
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            kfile = directory / name
            break
    if kfile is None:
        sys.exit(f"render_kustomize: no kustomization.yaml in {directory}")
    k = yaml.safe_load(kfile.read_text()) or {}
    unsupported = sorted(set(k) - SUPPORTED)
    if unsupported:
        print(f"render_kustomize: {kfile}: unsupported fields {unsupported}; "
              "install kubectl or kustomize to render this", file=sys.stderr)
        sys.exit(2)
    docs = []
    for res in k.get("resources") or []:
        path = (directory / res).resolve()
        if path.is_dir():
            docs.extend(render(path))
        elif path.is_file():
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
        else:
            sys.exit(f"render_kustomize: {kfile}: resource {res!r} not found")
    seen = set()
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"), (d.get("metadata") or {}).get("name"))
        if key in seen:
            sys.exit(f"render_kustomize: duplicate resource {key}")
        seen.add(key)
    return docs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: render_kustomize.py DIR")
    docs = render(Path(sys.argv[1]))
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, default_flow_style=False, width=1000)


if __name__ == "__main__":
    main()
