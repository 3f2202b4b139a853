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
* `configMapGenerator:` / `secretGenerator:` with `envs`, `files`, `literals`, `type` and
                `behavior` (create / merge / replace), `generatorOptions: labels`, and
                kustomize's content-hash name suffix, with the references to the generated
                names rewritten (containers' envFrom and env, volumes, and the extra
                `nameReference` field specs of `configurations:` files)
* `labels:`     `pairs` with includeSelectors false (metadata and, with includeTemplates,
                pod templates)

    python3 deploy/tools/render_kustomize.py k8s/overlays/example > rendered.yaml
"""
import base64
import copy
import hashlib
import json
import sys
from pathlib import Path

import yaml

GENERATION = {"configMapGenerator", "secretGenerator", "generatorOptions", "labels",
              "configurations"}
KUSTOMIZATION = {"apiVersion", "kind", "resources", "components", "namespace", "images",
                 "patches"} | GENERATION
COMPONENT = {"apiVersion", "kind", "resources", "patches"} | GENERATION
# Where a workload names a ConfigMap or a Secret (kustomize's built-in nameReference, the part
# k8s/ uses), as paths below the pod spec.
POD_REFS = {
    "ConfigMap": [("containers", "envFrom", "configMapRef", "name"),
                  ("containers", "env", "valueFrom", "configMapKeyRef", "name"),
                  ("volumes", "configMap", "name")],
    "Secret": [("containers", "envFrom", "secretRef", "name"),
               ("containers", "env", "valueFrom", "secretKeyRef", "name"),
               ("volumes", "secret", "secretName")],
}
# Marks a generated object until its name gets the hash (removed before output).
GENERATED = "__generated__"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
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
            docs.extend(render(p)[0])
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
    refs = []
    for conf in k.get("configurations") or []:
        refs.extend(name_references(directory / conf, path))
    docs = generate(directory, k, docs, path)
    for comp in k.get("components") or []:
        docs, comp_refs = render((directory / comp).resolve(), docs, component=True)
        refs.extend(comp_refs)
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
    for spec in k.get("labels") or []:
        add_labels(docs, spec, path)
    return docs, refs


def name_references(conf: Path, path):
    """The extra (kind, field path) pairs of a `configurations:` file that name a ConfigMap or
    a Secret."""
    c = yaml.safe_load(conf.read_text()) or {}
    if set(c) - {"nameReference"}:
        raise Unsupported(f"{path}: configurations fields {sorted(set(c) - {'nameReference'})}")
    out = []
    for ref in c.get("nameReference") or []:
        for fs in ref.get("fieldSpecs") or []:
            out.append((ref["kind"], fs["kind"], tuple(fs["path"].split("/"))))
    return out


def generate(directory, k, docs, path):
    """Applies this kustomization's generators to `docs` (create, merge or replace)."""
    opts = k.get("generatorOptions") or {}
    if set(opts) - {"labels"}:
        raise Unsupported(f"{path}: generatorOptions fields {sorted(set(opts) - {'labels'})}")
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for g in k.get(field) or []:
            extra = set(g) - {"name", "behavior", "envs", "files", "literals", "type"}
            if extra:
                raise Unsupported(f"{path}: {field} fields {sorted(extra)}")
            data = {}
            for env in g.get("envs") or []:
                for line in (directory / env).read_text().splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        key, _, value = line.partition("=")
                        data[key] = value
            for lit in g.get("literals") or []:
                key, _, value = lit.partition("=")
                data[key] = value
            for f in g.get("files") or []:
                key, _, src = f.rpartition("=") if "=" in f else ("", "", f)
                file = directory / src
                if not file.is_file():
                    sys.exit(f"render_kustomize: {path}: {field} file {src} not found")
                data[key or Path(src).name] = file.read_text()
            if kind == "Secret":
                data = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
            behavior = g.get("behavior", "create")
            old = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == g["name"]]
            if behavior == "create":
                if old:
                    sys.exit(f"render_kustomize: {path}: {kind} {g['name']} already exists")
                obj = {"apiVersion": "v1", "kind": kind,
                       "metadata": {"name": g["name"], GENERATED: True}}
                if opts.get("labels"):
                    obj["metadata"]["labels"] = dict(opts["labels"])
                if kind == "Secret":
                    obj["type"] = g.get("type", "Opaque")
                obj["data"] = data
                docs.append(obj)
            elif behavior in ("merge", "replace") and len(old) == 1:
                if behavior == "merge":
                    old[0].setdefault("data", {}).update(data)
                else:
                    old[0]["data"] = data
            else:
                sys.exit(f"render_kustomize: {path}: {kind} {g['name']}: behavior {behavior} "
                         "needs exactly one generated object of that name")
    return docs


def go_json(value):
    """Go's json.Marshal of a map: sorted keys, no spaces, <, > and & escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def content_hash(obj):
    """kustomize's name suffix: the first ten hex digits of the SHA-256 of the object's kind,
    type (Secrets) and data, with 0, 1, 3, a and e mapped to g, h, k, m and t. (kustomize v5
    hashes an empty "name": checked against it by scripts/check-deploy.sh.)"""
    m = {"kind": obj["kind"], "name": "", "data": obj.get("data") or {}}
    if obj["kind"] == "Secret":
        m["type"] = obj.get("type", "")
    digest = hashlib.sha256(go_json(m).encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def field_values(obj, fields):
    """(container, key) pairs for every value at the path `fields` (lists are walked)."""
    if not fields:
        return
    head, rest = fields[0], fields[1:]
    items = obj if isinstance(obj, list) else [obj]
    for item in items:
        if not isinstance(item, dict) or head not in item:
            continue
        if not rest:
            yield item, head
        else:
            yield from field_values(item[head], rest)


def suffix_names(docs, refs):
    """Gives each generated object its hashed name and rewrites the references to it."""
    renamed = {}
    for d in docs:
        if d["metadata"].pop(GENERATED, False):
            new = f"{d['metadata']['name']}-{content_hash(d)}"
            renamed[(d["kind"], d["metadata"]["name"])] = new
            d["metadata"]["name"] = new
    for d in docs:
        paths = []
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec")
        if pod is not None:
            for kind, fields in POD_REFS.items():
                for f in fields:
                    paths.append((kind, pod, f))
                    if f[0] == "containers":
                        paths.append((kind, pod, ("initContainers",) + f[1:]))
        for kind, owner, f in refs:
            if d.get("kind") == owner:
                paths.append((kind, d, f))
        for kind, root, fields in paths:
            for holder, key in list(field_values(root, fields)):
                holder[key] = renamed.get((kind, holder[key]), holder[key])
    return docs


def add_labels(docs, spec, path):
    if set(spec) - {"pairs", "includeSelectors", "includeTemplates"} or spec.get("includeSelectors"):
        raise Unsupported(f"{path}: labels other than pairs with includeSelectors false")
    for d in docs:
        d.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
        template = (d.get("spec") or {}).get("template")
        if spec.get("includeTemplates") and d.get("kind") in WORKLOADS and template is not None:
            template.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])


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
        docs, refs = render(Path(sys.argv[1]).resolve())
        docs = suffix_names(docs, refs)
    except Unsupported as e:
        print(f"render_kustomize: {e}; install kubectl or kustomize to render this", file=sys.stderr)
        sys.exit(2)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, default_flow_style=False, width=1000)


if __name__ == "__main__":
    main()
