#!/usr/bin/env python3
"""fleet-stats benchmark, with a large registry (default 100,000 devices):

1. Status change -> WebSocket frame: one device at a time publishes
   devices/<id>/status over MQTT; time until /api/v1/live shows it (p50, p99),
   then a burst of 1,000 changes at once (tools/bench/live_bench.c).
2. Many dashboards at once: --live-clients WebSockets on /api/v1/live (one of
   them never reads) while --live-rate status changes a second flap devices
   across the whole registry for --live-duration s: frame latency p50/p99,
   the longest silence any fast client saw, fleet-stats' CPU and memory
   (tools/bench/live_clients.c).
3. API requests per second and p99 for the device list (100 per page) and
   twin get (random devices), with wrk (32 connections, 2 threads, 10 s each).
4. The start-up snapshot: how long a fresh replica takes to load the fleet.

    tools/bench/fleet.py --devices 100000

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, os, re, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import cpu_seconds, free_port, psql, setup, start_ingest, start_twin, teardown, wait_ready  # noqa: E402
from mtls import rss_kib  # noqa: E402

LUA_TWIN = """
math.randomseed(os.time())
request = function()
  local path = string.format("/api/v1/devices/bench-%%04d/twin", math.random(0, %d))
  return wrk.format("GET", path)
end
"""


def wrk(args, url, token, script=None):
    cmd = ["wrk", "-t2", "-c32", f"-d{args.duration}s", "--latency", "-H", f"Authorization: Bearer {token}"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=args.duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (float(rps.group(1)) if rps else 0, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?",
            int(non2xx.group(1)) if non2xx else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100000)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--live-clients", type=int, default=1000)
    ap.add_argument("--live-rate", type=int, default=5000, help="status changes a second while they watch")
    ap.add_argument("--live-duration", type=int, default=20)
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    stack, pg_port, broker, broker_port = setup(args, "motehub-bench-fleet-")
    work = stack.work
    pg_url = f"host=127.0.0.1 port={pg_port} user=postgres dbname=bench"
    b = lambda rel: os.path.join(stack.bin, rel)  # noqa: E731
    try:
        key = os.path.join(work, "fleet-signing.pem")
        subprocess.check_call(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key])
        ing_port, ing_rpc, _ = start_ingest(stack, pg_url, rpc=True)
        dl = f"tcp://127.0.0.1:{free_port()}"
        _, (t_port, t_rpc, t_ev, _) = start_twin(stack, pg_url, dl)
        t0 = time.time()
        subprocess.check_call([b("tools/motesim/motesim"), f"--devices={args.devices}", "--prefix=bench",
                               f"--register=tcp://127.0.0.1:{t_rpc}", "--register-only=true"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"# registered {args.devices} devices through twin's RPC in {time.time() - t0:.1f} s", flush=True)
        o_port, o_rpc, o_ev, o_http = free_port(), free_port(), free_port(), free_port()
        stack.spawn("ota", [
            b("services/ota/motehub-ota"), f"--http-listen=127.0.0.1:{o_http}",
            f"--public-url=http://127.0.0.1:{o_http}", f"--bind=tcp://127.0.0.1:{o_port}",
            f"--rpc-bind=tcp://127.0.0.1:{o_rpc}", f"--events-bind=tcp://127.0.0.1:{o_ev}",
            f"--downlink-endpoint={dl}", f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}",
            f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}", f"--pg-url={pg_url}", f"--signing-key={key}"])
        wait_ready(o_http, "ota")
        gw_http, gw_ev = free_port(), free_port()
        stack.spawn("gateway", [
            b("services/gateway/motehub-gateway"), f"--http-listen=127.0.0.1:{gw_http}",
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--ingest-endpoint=tcp://127.0.0.1:{ing_port}",
            f"--events-bind=tcp://127.0.0.1:{gw_ev}", f"--downlink-bind={dl}",
            f"--twin-endpoint=tcp://127.0.0.1:{t_port}", f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}",
            f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}", f"--ota-endpoint=tcp://127.0.0.1:{o_port}"])
        wait_ready(gw_http, "gateway")
        token = subprocess.check_output([b("services/fleet-stats/motehub-fleet-stats"), "create-token", "bench",
                                         f"--pg-url={pg_url}"], text=True).strip()
        api, fs_http = free_port(), free_port()
        t0 = time.time()
        fs = stack.spawn("fleet-stats", [
            b("services/fleet-stats/motehub-fleet-stats"), f"--http-listen=127.0.0.1:{fs_http}",
            f"--api-listen=127.0.0.1:{api}", f"--pg-url={pg_url}",
            f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}", f"--ota-rpc-endpoint=tcp://127.0.0.1:{o_rpc}",
            f"--ingest-rpc-endpoint=tcp://127.0.0.1:{ing_rpc}", f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}",
            f"--ota-events-endpoint=tcp://127.0.0.1:{o_ev}", f"--gateway-events-endpoint=tcp://127.0.0.1:{gw_ev}"])
        wait_ready(fs_http, "fleet-stats")
        print(f"# fleet-stats ready (snapshot of {args.devices} devices loaded) {time.time() - t0:.2f} s after start",
              flush=True)
        with open(os.path.join(work, "fleet-stats.log")) as f:
            m = re.search(r"fleet snapshot: (\d+) devices, \d+ online, in (\d+) ms", f.read())
            if m:
                print(f"snapshot: {m.group(1)} devices in {m.group(2)} ms", flush=True)
        time.sleep(2)
        out = subprocess.run([b("tools/bench/live_bench"), f"--mqtt-url=tcp://127.0.0.1:{broker_port}",
                              f"--api-port={api}", f"--token={token}", "--prefix=bench",
                              f"--changes={args.changes}"], capture_output=True, text=True, timeout=600)
        print(out.stdout.strip(), flush=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
        # live_bench's connection is given back once a write finds it gone (a ping within 5 s of quiet)
        for _ in range(60):
            m = re.search(r"^mh_fleet_live_clients (\S+)", urllib.request.urlopen(
                f"http://127.0.0.1:{fs_http}/metrics").read().decode(), re.M)
            if m and float(m.group(1)) == 0:
                break
            time.sleep(0.5)
        rss0, cpu0, t0 = rss_kib(fs.pid), cpu_seconds(fs.pid), time.time()
        lc = subprocess.Popen([b("tools/bench/live_clients"), f"--port={api}", f"--token={token}",
                               f"--clients={args.live_clients}", "--slow=1", f"--duration={args.live_duration}",
                               f"--mqtt-url=tcp://127.0.0.1:{broker_port}", "--prefix=bench",
                               f"--devices={args.devices}", f"--rate={args.live_rate}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss_max = rss0
        while lc.poll() is None:  # fleet-stats' memory at its highest while they are held
            rss_max = max(rss_max, rss_kib(fs.pid))
            time.sleep(0.5)
        stdout, stderr = lc.communicate()
        out = subprocess.CompletedProcess(lc.args, lc.returncode, stdout, stderr)
        cpu, wall = cpu_seconds(fs.pid) - cpu0, time.time() - t0
        print(out.stdout.strip(), flush=True)
        m = re.search(r"connected=(\d+).*changes=(\d+) frames=(\d+) latency_p50_ms=(\S+) latency_p99_ms=(\S+)"
                      r" latency_max_ms=(\S+) min_frames=(\d+) max_gap_ms=(\d+)", out.stdout)
        if m:
            print(f"live: {m.group(1)} dashboards (one never reading) while {int(m.group(2)) / args.live_duration:.0f}"
                  f" status changes/s flapped {args.devices} devices: frames p50 {m.group(4)} ms, p99 {m.group(5)} ms,"
                  f" max {m.group(6)} ms; every fast client {m.group(7)}+ frames, longest silence {m.group(8)} ms;"
                  f" fleet-stats {cpu / wall:.2f} cores, RSS {rss0 / 1024:.1f} MiB before ->"
                  f" {rss_max / 1024:.1f} MiB while held", flush=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
        lua = os.path.join(work, "twin.lua")
        with open(lua, "w") as f:
            f.write(LUA_TWIN % (args.devices - 1))
        for name, url, script in (
                ("device list (limit=100)", f"http://127.0.0.1:{api}/api/v1/devices?limit=100", None),
                ("device list, status=offline filter", f"http://127.0.0.1:{api}/api/v1/devices?limit=100&status=offline", None),
                ("twin get (random device)", f"http://127.0.0.1:{api}/", lua),
                ("fleet summary", f"http://127.0.0.1:{api}/api/v1/fleet/summary", None)):
            rps, p50, p99, bad = wrk(args, url, token, script)
            print(f"api {name}: {rps:.0f} req/s, p50 {p50}, p99 {p99}" + (f" ({bad} non-2xx)" if bad else ""),
                  flush=True)
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
