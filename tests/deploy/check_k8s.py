#!/usr/bin/env python3
"""Checks deploy/k8s/ against the code and the design (TAP; no cluster
here): every document well-formed; every workload runs an installed
program with variables it reads, with liveness on /healthz and readiness on
/readyz at the port it serves them; every endpoint in the ConfigMap or a
workload names a Service that exposes the port, headless for the ZeroMQ
fan-out; HorizontalPodAutoscalers for gateway, ingest and twin aim at
workloads that exist; NetworkPolicies keep the planes apart; every Secret a
workload mounts is one create-secrets.sh makes; CURVE on everywhere."""
import glob, os, re, sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from code_facts import COMMON, PROGRAMS, ROOT, installed_programs, options_of, report  # noqa: E402

results = []


def check(name, ok, detail=""):
    results.append((name, ok, detail))


def main():
    docs = []
    bad_docs = []
    for f in sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/*.yaml"))):
        for d in yaml.safe_load_all(open(f)):
            if d is None:
                continue
            if not all(k in d for k in ("apiVersion", "kind", "metadata")) or "name" not in d["metadata"]:
                bad_docs.append(f"{os.path.basename(f)}: {str(d)[:60]}")
            docs.append(d)
    check("every document has apiVersion, kind and a name", not bad_docs and len(docs) > 10, "; ".join(bad_docs))
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind["ConfigMap"]["motehub-config"]["data"]
    services = by_kind.get("Service", {})
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    installed = installed_programs()
    secret_script = open(os.path.join(ROOT, "deploy/k8s/create-secrets.sh")).read()
    made_secrets = set(re.findall(r"create secret generic ([a-z0-9-]+)", secret_script))

    bad_prog, bad_var, bad_probe, bad_sec, curve_off = [], [], [], [], []
    for name, w in workloads.items():
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if not c["image"].startswith("motehub/motehub"):
                continue
            cmd = " ".join(c.get("command") or [])
            prog = next((p for p in PROGRAMS if re.search(rf"(^|\s){re.escape(p)}(\"|$|\s)", cmd)), None)
            if prog not in installed:
                bad_prog.append(f"{name}: {cmd}")
                continue
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            if any(r.get("configMapRef", {}).get("name") == "motehub-config" for r in c.get("envFrom") or []):
                env = {**config, **env}
            known = options_of(PROGRAMS[prog]) | COMMON
            for k in env:
                if k.startswith("MH_") and k not in known and k not in config:
                    bad_var.append(f"{name}: {prog} does not read {k}")
            if "MH_CURVE_DIR" not in env:
                curve_off.append(name)
            http = int(str(env.get("MH_HTTP_LISTEN", ":0")).split(":")[-1])
            lp = (c.get("livenessProbe") or {}).get("httpGet") or {}
            rp = (c.get("readinessProbe") or {}).get("httpGet") or {}
            if lp.get("path") != "/healthz" or rp.get("path") != "/readyz" or lp.get("port") != http \
                    or rp.get("port") != http:
                bad_probe.append(f"{name}: liveness {lp}, readiness {rp}, serves {http}")
        for v in spec.get("volumes") or []:
            sec = (v.get("secret") or {}).get("secretName")
            if sec and sec not in made_secrets:
                bad_sec.append(f"{name}: {sec}")
        for c in spec["containers"]:
            for e in c.get("env") or []:
                ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
                if ref and ref not in made_secrets:
                    bad_sec.append(f"{name}: {ref}")
    check("every workload runs an installed program", not bad_prog, "; ".join(bad_prog))
    everyone = set().union(*(options_of(src) for src in PROGRAMS.values())) | COMMON
    unread = [k for k in config if k.startswith("MH_") and k not in everyone]
    check("every variable is one its program reads", not bad_var and not unread,
          "; ".join(bad_var + [f"ConfigMap: nothing reads {k}" for k in unread]))
    check("liveness on /healthz and readiness on /readyz, on the port served", not bad_probe, "; ".join(bad_probe))
    check("every Secret mounted is one create-secrets.sh makes", not bad_sec, "; ".join(bad_sec))
    check("CURVE is on in every Motehub workload", not curve_off, str(curve_off))

    # endpoints -> Services exposing the port; ZeroMQ ones headless
    bad_ep = []
    sources = dict(config)
    for w in workloads.values():
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env") or []:
                if e.get("value"):
                    sources[e["name"]] = e["value"]
    for k, v in sources.items():
        for scheme, host, port in re.findall(r"(tcp|ssl)://([a-z][a-z0-9-]*):(\d+)", str(v)):
            svc = services.get(host)
            ports = {p["port"] for p in (svc or {}).get("spec", {}).get("ports", [])}
            if not svc or int(port) not in ports:
                bad_ep.append(f"{k}={v}: no Service {host} with port {port}")
            elif scheme == "tcp" and svc["spec"].get("clusterIP") != "None":
                bad_ep.append(f"{k}={v}: Service {host} is not headless (ZeroMQ connects to every pod)")
            sel = (svc or {}).get("spec", {}).get("selector", {}).get("app")
            if svc and sel not in workloads:
                bad_ep.append(f"Service {host} selects app={sel}, which nothing runs")
    check("every endpoint names a Service with its port; ZeroMQ Services are headless", not bad_ep,
          "; ".join(bad_ep))

    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    bad_hpa = [n for n in ("gateway", "ingest", "twin")
               if n not in hpas or hpas[n]["spec"]["scaleTargetRef"]["name"] not in workloads
               or hpas[n]["spec"]["scaleTargetRef"]["kind"] != workloads[hpas[n]["spec"]["scaleTargetRef"]["name"]]["kind"]]
    check("HorizontalPodAutoscalers for gateway, ingest and twin aim at their workloads", not bad_hpa, str(bad_hpa))
    gw_max = hpas.get("gateway", {}).get("spec", {}).get("maxReplicas", 0)
    m = re.search(r"--gateways (\d+)", open(os.path.join(ROOT, "deploy/k8s/00-namespace.yaml")).read())
    check("no more gateway replicas than gateway certificates", m and gw_max <= int(m.group(1)),
          f"max {gw_max}, certificates {m.group(1) if m else '?'}")

    pols = by_kind.get("NetworkPolicy", {})
    mgmt = pols.get("management-plane", {}).get("spec", {})
    ok = mgmt.get("podSelector", {}).get("matchLabels") == {"plane": "management"} and all(
        f.get("podSelector", {}).get("matchLabels") == {"plane": "management"}
        for r in mgmt.get("ingress", []) for f in r.get("from", []))
    check("the management plane takes traffic only from itself", ok)
    dev = pols.get("device-plane", {}).get("spec", {})
    check("the device plane takes only MQTT over TLS", dev.get("ingress") == [{"ports": [{"port": 8883}]}])
    planes = {n: w["spec"]["template"]["metadata"]["labels"].get("plane") for n, w in workloads.items()}
    check("the broker alone is on the device plane", [n for n, p in planes.items() if p == "devices"] == ["mosquitto"],
          str(planes))

    return report(results)

if __name__ == "__main__":
    sys.exit(main())
