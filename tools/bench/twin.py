#!/usr/bin/env python3
"""Twin benchmark, through MQTT end to end (motesim -> mosquitto -> gateway ->
twin -> PostgreSQL -> twin -> gateway -> mosquitto -> motesim):

1. Twin updates per second at 1,000 devices, with p50/p99 from publishing
   twin/update to receiving update/accepted (the generator puts the send
   time in the clientToken), at each offered rate. The generator is
   moteload --twin (a few µs a message, so the figure is the pipeline's) or,
   with --generator motesim, motesim (Paho, ~200 µs an update); with
   --protocols native,aws motesim also updates the same devices through the
   AWS IoT classic shadow ($aws/things/ID/shadow/update), in the same run.
2. Delivery of 10,000 queued commands to 1,000 offline devices that then
   connect at once: time from the first connect to the last command handled.

    tools/bench/twin.py --rates 2000,5000,8000 --duration 20
    tools/bench/twin.py --generator motesim --rates 3000
    tools/bench/twin.py --twins 2
    tools/bench/twin.py --rates 1000,2000 --protocols native,aws --no-commands

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, os, re, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import (cpu_seconds, free_port, postgres_cpu, postgres_pids, setup, start_ingest, start_twin,  # noqa: E402
                       teardown, wait_ready)


def motesim(stack, name, args, tool="tools/motesim/motesim"):
    p = stack.spawn(name, [os.path.join(stack.bin, tool)] + args)
    cpu = 0.0
    while p.poll() is None:
        cpu = cpu_seconds(p.pid)
        time.sleep(0.2)
    stack.procs.remove(p)
    with open(os.path.join(stack.work, name + ".log")) as f:
        return f.read(), cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="2000,5000,8000")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=10000)
    ap.add_argument("--twins", type=int, default=1, help="twin replicas")
    ap.add_argument("--build", default="build")
    ap.add_argument("--protocols", default="native", help="native and/or aws, comma-separated")
    ap.add_argument("--generator", default="moteload", choices=["moteload", "motesim"],
                    help="what sends the native updates (aws: always motesim)")
    ap.add_argument("--no-commands", action="store_true", help="skip the command-delivery part")
    args = ap.parse_args()
    protocols = args.protocols.split(",")
    stack, pg_port, broker, broker_port = setup(args, "motehub-bench-twin-", plugin="aws" in protocols)
    work = stack.work
    pg_url = f"host=127.0.0.1 port={pg_port} user=postgres dbname=bench"
    try:
        ing_port, _, _ = start_ingest(stack, pg_url)
        dl = f"tcp://127.0.0.1:{free_port()}"
        twins = []
        for i in range(args.twins):
            p, ports = start_twin(stack, pg_url, dl, f"twin-{i}")
            twins.append((p, *ports))
        rpc_ep = f"tcp://127.0.0.1:{twins[0][2]}"
        gw_http = free_port()
        gw = stack.spawn("gateway", [
            os.path.join(stack.bin, "services/gateway/motehub-gateway"), f"--http-listen=127.0.0.1:{gw_http}",
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--ingest-endpoint=tcp://127.0.0.1:{ing_port}",
            "--events-bind=", f"--downlink-bind={dl}",
            "--twin-endpoint=" + ",".join(f"tcp://127.0.0.1:{t[1]}" for t in twins),
            f"--twin-rpc-endpoint={rpc_ep}",
            "--twin-events-endpoint=" + ",".join(f"tcp://127.0.0.1:{t[3]}" for t in twins)])
        wait_ready(gw_http, "gateway")
        print(f"# {args.devices} devices (one {args.generator} process, QoS 1), {args.twins} twin replica(s), "
              f"1 gateway, PostgreSQL 15; logs in {work}", flush=True)
        common = [f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--devices={args.devices}",
                  "--interval=24h", "--report=0", "--connect-rate=5000", f"--register={rpc_ep}"]
        for rate, proto in [(int(r), p) for r in args.rates.split(",") for p in protocols]:
            c0 = {"gateway": cpu_seconds(gw.pid), "mosquitto": cpu_seconds(broker.pid)}
            for i, t in enumerate(twins):
                c0[f"twin{i}"] = cpu_seconds(t[0].pid)
            pg0 = {pid: cpu_seconds(pid) for pid in postgres_pids()}
            gen = "moteload" if proto == "native" and args.generator == "moteload" else "motesim"
            prefix = f"u{rate}{proto[0]}"
            if gen == "moteload":
                motesim(stack, f"register-{prefix}", [f"--devices={args.devices}", f"--prefix={prefix}",
                                                      f"--register={rpc_ep}", "--register-only=true"])
                pg0 = {pid: cpu_seconds(pid) for pid in postgres_pids()}
                c0 = {k: cpu_seconds(p.pid) for k, p in (("gateway", gw), ("mosquitto", broker))}
                for i, t in enumerate(twins):
                    c0[f"twin{i}"] = cpu_seconds(t[0].pid)
                out, sim_cpu = motesim(stack, f"moteload-updates-{rate}", [
                    f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--devices={args.devices}", f"--prefix={prefix}",
                    "--twin=true", f"--rate={rate}", f"--duration={args.duration}s", "--report=0"],
                    tool="tools/moteload/moteload")
                g = re.search(r"published=(\d+) .*accepted=(\d+) rejected=(\d+) accepted_rate=(\S+) "
                              r"accepted_p50_ms=(\S+) accepted_p99_ms=(\S+)", out)
                m = g and g.groups()
            else:
                out, sim_cpu = motesim(stack, f"motesim-updates-{rate}-{proto}",
                                       common + [f"--prefix={prefix}", f"--twin-rate={rate}",
                                                 f"--duration={args.duration + 5}s",
                                                 f"--aws={'true' if proto == 'aws' else 'false'}"])
                g = re.search(r"twin_updates sent=(\d+) accepted=(\d+) rejected=(\d+) rate=(\S+) "
                              r"p50_ms=(\S+) p99_ms=(\S+)", out)
                m = g and g.groups()
            if not m:
                sys.exit(f"{gen} printed no result; see {work}")
            cpu = {"gateway": cpu_seconds(gw.pid) - c0["gateway"],
                   "mosquitto": cpu_seconds(broker.pid) - c0["mosquitto"],
                   "postgres": postgres_cpu(pg0), gen: sim_cpu}
            for i, t in enumerate(twins):
                cpu[f"twin{i}"] = cpu_seconds(t[0].pid) - c0[f"twin{i}"]
            acc = int(m[1])
            per_k = acc / 1000 or 1
            print(f"{proto} updates ({gen}) offered={rate}/s: sent {m[0]}, accepted {acc}, rejected {m[2]}; "
                  f"{float(m[3]):.0f} updates/s; p50 {float(m[4]):.1f} ms, "
                  f"p99 {float(m[5]):.1f} ms; CPU s/1k updates: "
                  + ", ".join(f"{k} {v / per_k:.3f}" for k, v in cpu.items()), flush=True)
        if args.no_commands:
            return
        out, _ = motesim(stack, "motesim-commands",
                         common + ["--prefix=c", "--twin=false", "--connect-rate=100000",
                                   f"--queue-commands={args.commands}", "--duration=300s"])
        m = re.search(r"commands handled=(\d+) first_ms=(-?\d+) last_ms=(-?\d+) all_done_ms=(-?\d+)", out)
        q = re.search(r"queued (\d+) commands in (\d+) ms", out)
        if not m:
            sys.exit(f"motesim printed no command result; see {work}")
        print(f"commands: {q.group(1) if q else '?'} queued in {q.group(2) if q else '?'} ms for "
              f"{args.devices} offline devices; after connecting all at once, the first was handled at "
              f"{m.group(2)} ms and the last ({m.group(1)} handled) at {m.group(3)} ms", flush=True)
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
