// Validates KEDA and Prometheus-Operator objects against those projects' own schemas, as
// published in the npm packages @kubernetes-models/keda and @kubernetes-models/prometheus-operator
// (generated from the projects' Go API types / CRDs; offline once installed).
//
//   node validate.mjs OBJECT.json ...      (scripts/check-deploy.sh writes one JSON per object)
//
// Two checks per object:
//  1. the package's validator (types, required fields, enums, patterns: what the API server's
//     OpenAPI validation would refuse);
//  2. unknown fields, which those schemas allow but the API server prunes silently (a typo such
//     as `minReplicas` in a ScaledObject would vanish on apply): every key is looked up in the
//     package's TypeScript interfaces, recursively; maps and free-form objects end the walk.
// Exits 1 listing every problem.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

// The packages are installed beside this script (scripts/check-deploy.sh does `npm ci` in a
// cached copy of this directory).
const NODE_MODULES = join(dirname(fileURLToPath(import.meta.url)), "node_modules");
const pkgDir = (name) => join(NODE_MODULES, name);
const KINDS = {
  "keda.sh/v1alpha1/ScaledObject": [ScaledObject, join(pkgDir("@kubernetes-models/keda"), "keda.sh/v1alpha1/ScaledObject.d.ts")],
  "keda.sh/v1alpha1/TriggerAuthentication": [TriggerAuthentication, join(pkgDir("@kubernetes-models/keda"), "keda.sh/v1alpha1/TriggerAuthentication.d.ts")],
  "monitoring.coreos.com/v1/ServiceMonitor": [ServiceMonitor, join(pkgDir("@kubernetes-models/prometheus-operator"), "monitoring.coreos.com/v1/ServiceMonitor.d.ts")],
  "monitoring.coreos.com/v1/PrometheusRule": [PrometheusRule, join(pkgDir("@kubernetes-models/prometheus-operator"), "monitoring.coreos.com/v1/PrometheusRule.d.ts")],
};

// ---- the interfaces of a .d.ts file: its first `export interface`, with the properties of
// the interfaces it extends: property -> { type, file } (the file resolves the type's import).
const cache = new Map();
function iface(file) {
  if (cache.has(file)) return cache.get(file);
  const text = readFileSync(file, "utf8");
  const imports = {};
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) imports[m[1]] = m[2];
  const found = text.match(/export interface \w+(?: extends ([^{]+))? \{\n([\s\S]*?)\n\}/);
  const props = {};
  if (found) {
    for (const parent of (found[1] || "").split(",").map((x) => x.trim()).filter(Boolean)) {
      if (parent === "TypeMeta") {
        props.apiVersion = props.kind = { type: "string", file };
      } else if (imports[parent]) {
        Object.assign(props, iface(resolveImport(file, imports[parent])).props);
      }
    }
    for (const line of found[2].split("\n")) {
      const m = line.match(/^ {4}"([^"]+)"\??: (.*?);?$/);
      if (m) props[m[1]] = { type: m[2], file };
    }
  }
  const out = { imports, props };
  cache.set(file, out);
  return out;
}

function resolveImport(fromFile, spec) {
  if (spec.startsWith(".")) return join(dirname(fromFile), spec.replace(/\.js$/, ".d.ts"));
  const parts = spec.split("/");
  const n = spec.startsWith("@") ? 2 : 1;
  return join(pkgDir(parts.slice(0, n).join("/")), parts.slice(n).join("/") + ".d.ts");
}

// Walks `value` against the interface in `file`; pushes "path: unknown field" problems.
function unknownFields(value, file, path, problems) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  const { props } = iface(file);
  if (Object.keys(props).length === 0) return; // not an object interface: stop
  for (const [k, v] of Object.entries(value)) {
    const prop = props[k];
    if (prop === undefined) {
      problems.push(`${path}.${k}: unknown field (the schema has ${Object.keys(props).sort().join(", ")})`);
      continue;
    }
    const array = prop.type.match(/^Array<(\w+)>$/);
    const named = array ? array[1] : prop.type.match(/^\w+$/) ? prop.type : null;
    const imports = iface(prop.file).imports;
    if (!named || !imports[named]) continue; // a scalar, a map or an inline object
    const next = resolveImport(prop.file, imports[named]);
    if (array && Array.isArray(v)) v.forEach((item, i) => unknownFields(item, next, `${path}.${k}[${i}]`, problems));
    else unknownFields(v, next, `${path}.${k}`, problems);
  }
}

let failed = 0;
let checked = 0;
for (const f of process.argv.slice(2)) {
  const obj = JSON.parse(readFileSync(f, "utf8"));
  const id = `${obj.apiVersion}/${obj.kind}`;
  const name = `${obj.kind}/${obj.metadata?.name} (${f})`;
  const entry = KINDS[id];
  const problems = [];
  if (!entry) {
    problems.push(`no schema for ${id}`);
  } else {
    try {
      new entry[0](obj).validate();
    } catch (e) {
      problems.push(`schema: ${e.message}`);
    }
    unknownFields(obj, entry[1], "", problems);
  }
  checked++;
  if (problems.length) {
    failed++;
    for (const p of problems) console.log(`FAIL ${name}: ${p}`);
  } else {
    console.log(`ok   ${name}`);
  }
}
console.log(`${checked} KEDA / Prometheus-Operator objects checked, ${failed} failed`);
process.exit(failed || checked === 0 ? 1 : 0);
