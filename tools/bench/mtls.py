#!/usr/bin/env python3
"""Mutual-TLS connection benchmark: N devices, each with its own certificate
from a fleet CA made with `motectl ca`, connect to mosquitto configured as
deploy/ configures it (deploy/mosquitto/mosquitto-conf.sh: TLS 1.2+, client
certificate required, CRL, the motehub_acl plugin) — and, for comparison,
the same N over plain MQTT to a fresh broker.

Prints: certificates issued per second; handshakes (connections) per second
from the first connect to the last CONNACK; the broker's resident memory per
connection (RSS growth / N) and the simulator's; CPU seconds of each side.

    tools/bench/mtls.py --devices 10000
    tools/bench/mtls.py --devices 10000 --connect-rate 2000

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, os, re, resource, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import ROOT, Stack, build, cpu_seconds, free_port  # noqa: E402

NOFILE = 20000  # the machine's hard limit (PLATFORM-NOTES.md)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout=10):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"broker did not listen on {port}")


def run(stack, args, tls):
    """One broker, one motesim with args.devices; returns the figures."""
    work, b = stack.work, stack.bin
    port = free_port()
    tag = "mtls" if tls else "plain"
    conf = os.path.join(work, f"mosquitto-{tag}.conf")
    gen = [os.path.join(ROOT, "deploy/mosquitto/mosquitto-conf.sh"), "--certs", stack.certs,
           "--plugin", os.path.join(b, "services/broker-acl/motehub_acl.so"),
           "--tls-bind", "127.0.0.1"]
    if tls:
        gen += ["--tls-port", str(port)]
    else:  # the mTLS listener on a port nobody uses, plain MQTT on `port`
        gen += ["--tls-port", str(free_port()), "--plain-port", str(port)]
    if os.getuid() == 0:
        gen.append("--root")
    with open(conf, "w") as f:
        subprocess.check_call(gen, stdout=f)
    log = open(os.path.join(work, f"mosquitto-{tag}.log"), "ab")
    broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=raise_nofile)
    stack.procs.append(broker)
    wait_port(port)
    time.sleep(0.5)
    rss0, cpu0 = rss_kib(broker.pid), cpu_seconds(broker.pid)
    url = f"ssl://127.0.0.1:{port}" if tls else f"tcp://127.0.0.1:{port}"
    # args.sims simulator processes, devices s<k>-0000 ..., started together
    per = args.devices // args.sims
    sims, logs = [], []
    for k in range(args.sims):
        logs.append(os.path.join(work, f"motesim-{tag}-{k}.log"))
        argv = [os.path.join(b, "tools/motesim/motesim"), f"--mqtt-url={url}", f"--prefix=s{k}",
                f"--devices={per}", f"--connect-rate={args.connect_rate / args.sims}",
                "--interval=300s", "--twin=false", "--report=5s", f"--duration={args.hold + 600}s"]
        if tls:
            argv += [f"--certs={stack.fleet}", f"--mqtt-ca={stack.certs}/ca.crt"]
        sims.append(subprocess.Popen(argv, stdout=open(logs[-1], "wb"), stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile))
        stack.procs.append(sims[-1])
    t0 = time.time()
    done = {}
    while time.time() - t0 < 900 and len(done) < len(sims) and all(p.poll() is None for p in sims):
        for k, log in enumerate(logs):
            with open(log) as f:
                m = re.search(r"all (\d+) devices connected (\d+) ms", f.read())
            if m:
                done[k] = int(m.group(2))
        time.sleep(0.2)
    if len(done) < len(sims):
        raise SystemExit(f"not every device connected; see {work}")
    connect_ms = max(done.values())
    time.sleep(args.hold)  # settle: every session fully set up
    n = per * args.sims
    out = {"n": n, "connect_ms": connect_ms,
           "rate": n / (connect_ms / 1000.0),
           "broker_rss": (rss_kib(broker.pid) - rss0) / n,
           "broker_rss_total": rss_kib(broker.pid) / 1024.0,
           "sim_rss": sum(rss_kib(p.pid) for p in sims) / n,
           "broker_cpu": cpu_seconds(broker.pid) - cpu0,
           "sim_cpu": sum(cpu_seconds(p.pid) for p in sims),
           "retries": sum(1 for line in open(os.path.join(work, f"mosquitto-{tag}.log"))
                          if "unexpected eof" in line)}
    for p in sims:
        stack.stop(p, 60)
    stack.stop(broker)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--connect-rate", type=float, default=100000,
                    help="connects started per second (default: as fast as they go)")
    ap.add_argument("--sims", type=int, default=1, help="simulator processes")
    ap.add_argument("--hold", type=int, default=5, help="seconds connected before measuring memory")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    build(args)
    import tempfile
    work = tempfile.mkdtemp(prefix="motehub-mtls-")
    os.chmod(work, 0o755)
    stack = Stack(args, work)
    motectl = os.path.join(stack.bin, "tools/motectl/motectl")
    ca = os.path.join(work, "ca")
    stack.certs, stack.fleet = os.path.join(work, "broker"), os.path.join(work, "fleet")
    try:
        ctl = lambda *a: subprocess.check_call([motectl, "ca", "--ca-dir", ca, *a], stdout=subprocess.DEVNULL)
        ctl("init")
        ctl("issue", "--server", "broker", "--san", "127.0.0.1", "--out", stack.certs)
        subprocess.check_call(["cp", os.path.join(ca, "crl.pem"), stack.certs])
        t = time.time()
        for k in range(args.sims):
            ctl("issue", "--prefix", f"s{k}", "--count", str(args.devices // args.sims), "--out", stack.fleet)
        issue_s = time.time() - t
        print(f"# {args.devices} devices, {args.sims} motesim process(es), MQTT 5, connects started at up to "
              f"{args.connect_rate:.0f}/s; logs in {work}")
        print(f"issued {args.devices} device certificates (P-256) in {issue_s:.1f} s: "
              f"{args.devices / issue_s:.0f} per second", flush=True)
        for tls in ([True] if args.no_plain else [True, False]):
            r = run(stack, args, tls)
            print(f"{'mTLS ' if tls else 'plain'}: {r['n']} connected in {r['connect_ms'] / 1000:.1f} s = "
                  f"{r['rate']:.0f} handshakes/s; broker memory {r['broker_rss']:.1f} KiB per connection "
                  f"({r['broker_rss_total']:.0f} MiB in all), simulator {r['sim_rss']:.1f} KiB per device; "
                  f"CPU s: broker {r['broker_cpu']:.1f}, simulator {r['sim_cpu']:.1f}; "
                  f"{r['retries']} handshakes abandoned by the simulator and retried", flush=True)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
