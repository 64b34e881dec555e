// Every Kubernetes manifest in deploy/k8s against the Kubernetes API's own
// schemas, offline (npm kubernetes-models: the OpenAPI schemas of the
// Kubernetes release it names, compiled to validators). Beside
// tests/deploy/check_k8s.py, which checks the manifests against the code.
//   node validate.mjs DIR      prints TAP, one line per object
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const YAML = require("yaml");
const dir = process.argv[2];
const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
const lines = [];
for (const f of files) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(path.join(dir, f), "utf8"));
  for (const d of docs) {
    const o = d.toJS();
    if (!o) continue;
    const what = `${f}: ${o.kind} ${o.metadata?.name ?? "?"} (${o.apiVersion})`;
    try {
      if (d.errors.length) throw new Error(d.errors.map((e) => e.message).join("; "));
      // "apps/v1" -> kubernetes-models/apps/v1, "v1" -> kubernetes-models/v1
      const mod = require(`kubernetes-models/${o.apiVersion}`);
      const Kind = mod[o.kind];
      if (!Kind) throw new Error(`no ${o.kind} in ${o.apiVersion}`);
      new Kind(o).validate();
      lines.push(`ok - ${what}`);
    } catch (e) {
      lines.push(`not ok - ${what}`);
      for (const l of String(e.message).split("\n").slice(0, 8)) lines.push(`# ${l}`);
    }
  }
}
let n = 0;
const out = lines.map((l) => (/^(not )?ok - /.test(l) ? l.replace(/^(not )?ok - /, (m) => `${m.slice(0, -2)}${++n} - `) : l));
console.log(`1..${n}`);
console.log(out.join("\n"));
process.exit(out.some((l) => l.startsWith("not ok")) ? 1 : 0);
