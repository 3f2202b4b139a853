#!/usr/bin/env python3
"""Minimal kustomize renderer, the fallback of scripts/check-deploy.sh when neither a
kustomize-v4+ `kubectl kustomize` nor `kustomize` is installed (Debian's kubectl 1.20 embeds
kustomize v2, which predates components). scripts/check-deploy.sh compares its output with the
real kustomize's whenever one is available, so it cannot drift unnoticed.

It supports only what k8s/ uses, and refuses anything else with exit code 2 rather than
render it wrongly:

* `resources:`  YAML files, or directories holding their own kustomization
* `components:` directories holding a `kind: Component` kustomization
* `namespace:`  set on every namespaced object
* `images:`     name -> newName / newTag / digest, in containers and initContainers
* `patches:`    with `target:` and a JSON 6902 patch (add / replace / remove), or a
                strategic-merge patch that is exactly `$patch: delete` of one object

    python3 deploy/tools/render_kustomize.py k8s/overlays/example > rendered.yaml
"""
import copy
import sys
from pathlib import Path

import yaml

KUSTOMIZATION = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
COMPONENT = {"apiVersion", "kind", "resources", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class Unsupported(Exception):
    pass


def kfile(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    sys.exit(f"render_kustomize: no kustomization.yaml in {directory}")


def key(d):
    return (d.get("apiVersion", "").split("/")[0] if "/" in d.get("apiVersion", "") else "",
            d.get("kind"), (d.get("metadata") or {}).get("name"))


def load_resources(directory: Path, k: dict, path: Path):
    docs = []
    for res in k.get("resources") or []:
        p = (directory / res).resolve()
        if p.is_dir():
            docs.extend(render(p))
        elif p.is_file():
            docs.extend(d for d in yaml.safe_load_all(p.read_text()) if d is not None)
        else:
            sys.exit(f"render_kustomize: {path}: resource {res!r} not found")
    return docs


def render(directory: Path, base_docs=None, component=False):
    path = kfile(directory)
    k = yaml.safe_load(path.read_text()) or {}
    allowed = COMPONENT if component else KUSTOMIZATION
    want_kind = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != want_kind:
        raise Unsupported(f"{path}: kind {k.get('kind')!r} where a {want_kind} is expected")
    unsupported = sorted(set(k) - allowed)
    if unsupported:
        raise Unsupported(f"{path}: unsupported fields {unsupported}")
    docs = list(base_docs or []) + load_resources(directory, k, path)
    for comp in k.get("components") or []:
        docs = render((directory / comp).resolve(), docs, component=True)
    seen = set()
    for d in docs:
        if key(d) in seen:
            sys.exit(f"render_kustomize: {path}: duplicate resource {key(d)}")
        seen.add(key(d))
    for p in k.get("patches") or []:
        docs = apply_patch(directory, path, docs, p)
    if k.get("namespace"):
        for d in docs:
            if d.get("kind") not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    for img in k.get("images") or []:
        set_image(docs, img, path)
    return docs


def matches(doc, target):
    av = doc.get("apiVersion", "")
    group, version = (av.split("/", 1) if "/" in av else ("", av))
    for field, value in (("group", group), ("version", version), ("kind", doc.get("kind")),
                         ("name", (doc.get("metadata") or {}).get("name"))):
        if field in target and target[field] != value:
            return False
    extra = set(target) - {"group", "version", "kind", "name"}
    if extra:
        raise Unsupported(f"patch target fields {sorted(extra)}")
    return True


def apply_patch(directory, path, docs, p):
    if set(p) - {"target", "patch", "path"}:
        raise Unsupported(f"{path}: patch fields {sorted(set(p) - {'target', 'patch', 'path'})}")
    text = p.get("patch")
    if text is None:
        text = (directory / p["path"]).read_text()
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902
        if "target" not in p:
            raise Unsupported(f"{path}: a JSON 6902 patch needs a target")
        hit = [d for d in docs if matches(d, p["target"])]
        if not hit:
            sys.exit(f"render_kustomize: {path}: patch target {p['target']} matches nothing")
        for d in hit:
            for op in body:
                json6902(d, op, path)
        return docs
    if isinstance(body, dict) and body.get("$patch") == "delete":
        target = {"kind": body.get("kind"), "name": (body.get("metadata") or {}).get("name")}
        kept = [d for d in docs if not matches(d, target)]
        if len(kept) == len(docs):
            sys.exit(f"render_kustomize: {path}: $patch: delete of {target} matches nothing")
        return kept
    raise Unsupported(f"{path}: only JSON 6902 patches and `$patch: delete` are supported")


def json6902(doc, op, path):
    parts = [s.replace("~1", "/").replace("~0", "~") for s in op["path"].lstrip("/").split("/")]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
    last = parts[-1]
    kind = op.get("op")
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(idx, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[idx] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[idx]
        else:
            raise Unsupported(f"{path}: JSON 6902 op {kind!r}")
        return
    if kind in ("add", "replace"):
        if kind == "replace" and last not in parent:
            sys.exit(f"render_kustomize: {path}: replace of missing {op['path']}")
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        if last not in parent:
            sys.exit(f"render_kustomize: {path}: remove of missing {op['path']}")
        del parent[last]
    else:
        raise Unsupported(f"{path}: JSON 6902 op {kind!r}")


def set_image(docs, img, path):
    if set(img) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"{path}: images fields {sorted(set(img) - {'name', 'newName', 'newTag', 'digest'})}")
    for d in docs:
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            image = c.get("image", "")
            name = image.split("@")[0]
            tail = name.rsplit("/", 1)[-1]
            if ":" in tail:
                name = name[: len(name) - len(tail) + tail.index(":")]
            if name != img["name"]:
                continue
            new = img.get("newName", name)
            if img.get("digest"):
                new += "@" + img["digest"]
            elif img.get("newTag"):
                new += ":" + str(img["newTag"])
            else:
                new += image[len(name):]
            c["image"] = new


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: render_kustomize.py DIR")
    try:
        docs = render(Path(sys.argv[1]).resolve())
    except Unsupported as e:
        print(f"render_kustomize: {e}; install kubectl or kustomize to render this", file=sys.stderr)
        sys.exit(2)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, default_flow_style=False, width=1000)


if __name__ == "__main__":
    main()
