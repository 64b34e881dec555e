#!/usr/bin/env python3
"""Checks docker-compose.yml against the code, as this machine has no Docker
engine to run it (TAP output, counted by tests/run.sh):

- the file is valid (`docker-compose config` when installed);
- every image is built from a target the Dockerfile has, or is a pinned
  third-party image;
- every Motehub container runs a program the build installs;
- every MH_* / MOTESIM_* variable is one that program reads (its options
  table in the C source);
- every tcp:// / ssl:// endpoint names a service in the file that binds
  that port, and Kafka / PostgreSQL addresses match their services;
- health checks ask each daemon on the port it serves /readyz on;
- the planes: only the gateway (and the simulator, which is the devices
  plus an operator tool) is on both networks; the management network is
  internal; every service with secrets mounts them read-only.
"""
import os, re, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml

from code_facts import COMMON, PROGRAMS, installed_programs, options_of, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
results = []


def check(name, ok, detail=""):
    results.append((name, ok, detail))


def main():
    path = os.path.join(ROOT, "docker-compose.yml")
    dc = shutil.which("docker-compose")
    if dc:
        r = subprocess.run([dc, "-f", path, "config", "-q"], capture_output=True, text=True)
        check("docker-compose config accepts the file", r.returncode == 0, r.stderr.strip()[:300])
    else:
        check("docker-compose config accepts the file # SKIP docker-compose not installed", True)
    doc = yaml.safe_load(open(path))
    services = doc["services"]
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", open(os.path.join(ROOT, "Dockerfile")).read(), re.M))
    installed = installed_programs()

    bad = []
    for name, s in services.items():
        b = s.get("build")
        if b:
            if b.get("target") not in targets:
                bad.append(f"{name}: Dockerfile has no target {b.get('target')}")
        elif ":" not in s.get("image", "") or s["image"].endswith(":latest"):
            bad.append(f"{name}: third-party image {s.get('image')} is not pinned")
    check("images: built from Dockerfile targets or pinned", not bad, "; ".join(bad))

    # which port each service binds, from its environment
    binds = {}
    for name, s in services.items():
        ports = set()
        for k, v in (s.get("environment") or {}).items():
            m = re.match(r"(?:tcp://)?(?:0\.0\.0\.0|\*):(\d+)$", str(v))
            if m and (k.endswith("_BIND") or k.endswith("_LISTEN")):
                ports.add(int(m.group(1)))
        binds[name] = ports
    binds["mosquitto"] = {8883}
    binds["postgres"] = {5432}
    binds["kafka"] = {9092}

    bad_prog, bad_var, bad_ep, bad_hc = [], [], [], []
    for name, s in services.items():
        if s.get("image", "").startswith("motehub/motehub") and name != "secrets":
            cmd = s.get("command") or []
            prog = cmd[0] if cmd else None
            if prog not in installed:
                bad_prog.append(f"{name}: {prog}")
                continue
            known = options_of(PROGRAMS.get(prog, [])) | (COMMON if prog.startswith("motehub-") and prog != "motehub-coldstore" else set())
            for k in (s.get("environment") or {}):
                if (k.startswith("MH_") or k.startswith("MOTESIM_")) and k not in known:
                    bad_var.append(f"{name}: {prog} does not read {k}")
        for k, v in (s.get("environment") or {}).items():
            for host, port in re.findall(r"(?:tcp|ssl)://([a-z][a-z0-9-]*):(\d+)", str(v)):
                if host not in services or int(port) not in binds.get(host, set()):
                    bad_ep.append(f"{name} {k}={v}: {host} does not bind {port}")
            if k == "MH_KAFKA_BROKERS":
                host, port = str(v).split(":")
                if host not in services or int(port) not in binds[host]:
                    bad_ep.append(f"{name} {k}={v}")
            if k == "MH_PG_URL":
                m = re.search(r"@([a-z0-9-]+):(\d+)/", str(v))
                if not m or m.group(1) not in services or int(m.group(2)) not in binds[m.group(1)]:
                    bad_ep.append(f"{name} {k}={v}")
        hc = (s.get("healthcheck") or {}).get("test") or []
        url = next((t for t in hc if isinstance(t, str) and "/readyz" in t), None)
        if url:
            listen = (s.get("environment") or {}).get("MH_HTTP_LISTEN", "")
            if not listen or listen.split(":")[-1] != re.search(r":(\d+)/readyz", url).group(1):
                bad_hc.append(f"{name}: checks {url}, serves {listen or 'the default'}")
    check("every Motehub container runs an installed program", not bad_prog, "; ".join(bad_prog))
    check("every variable is one its program reads", not bad_var, "; ".join(bad_var))
    check("every endpoint names a service that binds its port", not bad_ep, "; ".join(bad_ep))
    check("health checks ask /readyz on the port each daemon serves it", not bad_hc, "; ".join(bad_hc))

    nets = doc.get("networks", {})
    both = sorted(n for n, s in services.items() if {"devices", "management"} <= set(s.get("networks") or []))
    check("only the gateway (and the simulator) span both planes", both == ["gateway", "motesim"], str(both))
    check("the management network is internal", (nets.get("management") or {}).get("internal") is True)
    check("the broker is on the device plane only", services["mosquitto"].get("networks") == ["devices"])
    ro = [n for n, s in services.items() if n != "secrets" and any(
        str(v).startswith("secrets:") and not str(v).endswith(":ro") for v in s.get("volumes") or [])]
    check("secrets are mounted read-only outside the secrets job", not ro, str(ro))
    curve = [n for n, s in services.items() if s.get("image", "").startswith("motehub/motehub")
             and n not in ("secrets", "coldstore")
             and "MH_CURVE_DIR" not in (s.get("environment") or {})]
    check("CURVE is on for every service", not curve, str(curve))
    tls = services["gateway"]["environment"]["MH_MQTT_URL"].startswith("ssl://")
    check("the gateway reaches the broker over mutual TLS", tls)

    return report(results)

if __name__ == "__main__":
    sys.exit(main())
