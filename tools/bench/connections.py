#!/usr/bin/env python3
"""Connections per broker: how many devices one mosquitto holds here, how
fast they connect, and the memory each connected device costs mosquitto
and every Motehub process on the telemetry path (gateway, ingest) while
they publish.

moteload connects --devices devices (one TCP connection and client id
each, plain MQTT on loopback) at --connect-rate, then each publishes three
metrics every --interval for --duration; RSS is read before the first
connection and once all are connected and publishing.

    tools/bench/connections.py --devices 10000,19000

The file limit of this machine (20,000) bounds one process's connections:
moteload and mosquitto each hold one descriptor per device.
"""
import argparse, os, re, resource, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import counter, free_port, http_get, setup, start_ingest, teardown, wait_ready  # noqa: E402
from mtls import rss_kib  # noqa: E402


def run(stack, broker, broker_port, pg_port, devices, args):
    pg_url = f"host=127.0.0.1 port={pg_port} user=postgres dbname=bench"
    port, _, ihttp = start_ingest(stack, pg_url)
    ingest = stack.procs[-1]
    ghttp = free_port()
    gateway = stack.spawn(f"gateway-{devices}", [
        os.path.join(stack.bin, "services/gateway/motehub-gateway"), f"--http-listen=127.0.0.1:{ghttp}",
        f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--ingest-endpoint=tcp://127.0.0.1:{port}",
        "--events-bind=", "--check-registered=false", "--twin-endpoint=", "--downlink-bind=", "--ota-endpoint="])
    wait_ready(ghttp, "gateway")
    procs = {"mosquitto": broker, "gateway": gateway, "ingest": ingest}
    before = {k: rss_kib(p.pid) for k, p in procs.items()}
    load = stack.spawn(f"moteload-{devices}", [
        os.path.join(stack.bin, "tools/moteload/moteload"), f"--mqtt-url=tcp://127.0.0.1:{broker_port}",
        f"--prefix=c{devices}", f"--devices={devices}", f"--interval={args.interval}s",
        f"--duration={args.duration}s", f"--connect-rate={args.connect_rate}", "--metrics=3", "--report=0"])
    log = os.path.join(stack.work, f"moteload-{devices}.log")
    # the middle of the publishing phase: connected, and a few intervals in
    while not re.search(r"devices connected in", open(log).read()):
        if load.poll() is not None:
            sys.exit(f"moteload ended early: {open(log).read()[-500:]}")
        time.sleep(0.2)
    time.sleep(min(args.duration / 2, 3 * args.interval))
    during = {k: rss_kib(p.pid) for k, p in procs.items()}
    load.wait()
    stack.procs.remove(load)
    text = open(log).read()
    m = re.search(r"(\d+) of (\d+) devices connected in ([\d.]+) s", text)
    res = re.search(r"published=(\d+) acked=(\d+)", text)
    points = counter(http_get(ihttp, "/metrics"), "mh_ingest_points_stored_total")
    stack.stop(gateway)
    stack.stop(ingest)
    return {"connected": int(m.group(1)), "connect_s": float(m.group(3)), "published": int(res.group(1)),
            "acked": int(res.group(2)), "points": int(points),
            "per_device": {k: (during[k] - before[k]) * 1024 / devices for k in procs},
            "rss": during}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="10000,19000")
    ap.add_argument("--interval", type=int, default=10, help="seconds between a device's messages")
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--connect-rate", type=int, default=5000)
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stack, pg_port, broker, broker_port = setup(args, "motehub-conns-")
    try:
        print(f"# moteload devices over plain MQTT on loopback, 3 metrics every {args.interval} s, file limit "
              f"{hard}; RSS growth per connected device while publishing; logs in {stack.work}")
        for n in [int(d) for d in args.devices.split(",")]:
            r = run(stack, broker, broker_port, pg_port, n, args)
            print(f"devices={n}: connected {r['connected']} in {r['connect_s']:.1f} s "
                  f"({r['connected'] / r['connect_s']:.0f}/s); published {r['published']} acked {r['acked']}, "
                  f"{r['points']} points stored; bytes per device: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["per_device"].items())
                  + "; RSS MiB: " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in r["rss"].items()), flush=True)
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
