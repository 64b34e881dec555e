#!/usr/bin/env python3
"""OTA benchmark, end to end (ota -> gateway -> mosquitto -> motesim devices,
which download over HTTP, verify SHA-256 and the Ed25519 signature, install
and report back through the gateway):

1. A rollout of 2.0.0 to every device through three waves (1 %, 10 %, 100 %):
   time per wave (start to last job finished) and jobs sent per second.
2. A rollout of 3.0.0 that fails on 8 % of the devices, with a canary wave
   large enough to see it (10 %, failureThreshold 5 % once half the canary,
   at most 500, finished):
   time from the failure gate tripping to every rollback job sent.

4. With --health instead: a rollout of 5.0.0, which installs fine and then
   crash-loops on 30 % of the devices (motesim --misbehave), with a health
   gate (disconnects, offline, firmwareRollback, temperature p95 against
   the control group): the time from the first misbehaving device's first
   disconnect to the rollback decision; then, with a healthy 6.0.0 under
   observation, what one evaluation costs (ota's wall time per evaluation,
   and the CPU of ota, twin, ingest and PostgreSQL over 60 s with the gate
   evaluating against 60 s without it).

3. With --aws-jobs instead: the devices speak the AWS IoT device APIs
   (motesim --aws), and one job of a JSON document goes to all of them in
   one wave: jobs handed, notified (notify-next), answered SUCCEEDED
   ($aws/things/ID/jobs/JOB/update) and counted, per second.

    tools/bench/ota.py --devices 10000
    tools/bench/ota.py --devices 2000 --install-time 500ms
    tools/bench/ota.py --devices 10000 --aws-jobs
    tools/bench/ota.py --devices 10000 --health

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import free_port, http_get, psql, setup, start_ingest, start_twin, teardown, wait_ready  # noqa: E402


def settle(gw_http, quiet=3.0, timeout=120):
    """Waits until the gateway has published no downlink for `quiet` seconds:
    jobs share the gateway's in-order downlink with twin's replies, so a
    rollout started while 10,000 just-connected devices' twin replies are
    still queued would time that backlog, not the rollout."""
    def published():
        m = re.search(r"^mh_gateway_downlink_published_total (\S+)$", http_get(gw_http, "/metrics"), re.M)
        return float(m.group(1)) if m else 0.0
    end, last, since = time.time() + timeout, published(), time.time()
    while time.time() < end:
        time.sleep(0.5)
        now = published()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return
    print("# warning: the gateway's downlink did not settle", flush=True)


def cpu_seconds(pids):
    """User + system CPU seconds of these processes and their threads."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def histogram(port, name):
    """(count, sum) of a histogram on a service's /metrics."""
    text = http_get(port, "/metrics")
    c = re.search(rf"^{name}_count (\S+)$", text, re.M)
    s = re.search(rf"^{name}_sum (\S+)$", text, re.M)
    return (float(c.group(1)), float(s.group(1))) if c and s else (0.0, 0.0)


def health_bench(args, stack, pg_port, http, common, bench):
    o_http = http["ota"]
    health = ('"health":{"windowSeconds":600,"signals":[{"signal":"disconnects"},{"signal":"offline"},'
              '{"signal":"firmwareRollback"},{"signal":"metric","metric":"temperature","stat":"p95"}]}')
    # 30 % of the devices crash-loop 5 s after installing 5.0.0
    subprocess.check_call([bench] + common + [
        f"--upload=1.0.0:{args.image_size},5.0.0:{args.image_size},6.0.0:{args.image_size}",
        '--rollout={"firmware":"5.0.0","target":{"firmware":"1.0.0"},'
        '"waves":[{"percent":5},{"percent":100}],"soakSeconds":0,'
        f'"maxPerMinute":{args.max_per_minute},"jobTimeoutSeconds":600,{health}}}', "--until=rolled_back"])
    row = psql(pg_port, "SELECT id, stopped_ms, reason FROM ota.rollouts WHERE firmware = '5.0.0'").split("|")
    rid, stopped, reason = row[0], int(row[1]), row[2]
    first = int(psql(pg_port, "SELECT min(l.ts_ms) FROM twin.conn_log l JOIN ota.jobs j ON j.device_id = l.device_id"
                     f" WHERE j.rollout_id = '{rid}' AND j.action = 'install' AND j.status = 'succeeded'"
                     " AND NOT l.online AND l.ts_ms > j.finished_ms") or 0)
    ok = psql(pg_port, f"SELECT count(*), min(finished_ms) FROM ota.jobs WHERE rollout_id = '{rid}'"
                       " AND action = 'install' AND status = 'succeeded'").split("|")
    failed = psql(pg_port, f"SELECT count(*) FROM ota.jobs WHERE rollout_id = '{rid}' AND action = 'install'"
                           " AND status IN ('failed', 'timed_out')")
    print(f"health gate, crash loop: {ok[0]} installs succeeded ({failed} failed); first disconnect of a"
          f" misbehaving device {(first - int(ok[1])) / 1000:.1f} s after the first success; rollback decided"
          f" {(stopped - first) / 1000:.1f} s after that first disconnect", flush=True)
    print(f"  reason: {reason}", flush=True)
    # the cost of an evaluation: a healthy 6.0.0 under observation (5 % of
    # the devices, 600 s windows), 60 s with the gate against 60 s before
    time.sleep(20)  # the rollbacks settle
    names = ["ota", "twin", "ingest"]
    pids = {p.args[0].rsplit("/", 1)[-1].replace("motehub-", ""): p.pid for p in stack.procs
            if any(n in p.args[0] for n in names)}
    pg_pids = [int(x) for x in subprocess.check_output(["pgrep", "-f", "postgres"], text=True).split()]

    def sample():
        return {n: cpu_seconds([pid]) for n, pid in pids.items()} | {"postgres": cpu_seconds(pg_pids)}

    def evals():
        return histogram(o_http, "mh_ota_health_evaluation_seconds")

    def rpc():  # twin's and ingest's RPC handling: in the gated minute, nearly all health's
        return histogram(http["twin"], "mh_twin_rpc_seconds"), histogram(http["ingest"], "mh_ingest_query_seconds")

    a = sample()
    time.sleep(60)
    b = sample()
    subprocess.Popen([bench] + common + [
        '--rollout={"firmware":"6.0.0","target":{"firmware":"1.0.0"},'
        '"waves":[{"percent":5},{"percent":100}],"soakSeconds":0,'
        f'"maxPerMinute":{args.max_per_minute},"jobTimeoutSeconds":600,{health}}}', "--until=completed"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wave 1 installed: its size is 5 % of the devices on 1.0.0 by then (some
    # crash-looping ones may still be on their way back from 5.0.0)
    end = time.time() + 180
    while psql(pg_port, "SELECT count(*) > 0 AND bool_and(j.status = 'succeeded') FROM ota.jobs j"
                        " JOIN ota.rollouts r ON r.id = j.rollout_id WHERE r.firmware = '6.0.0'"
                        " AND j.wave = 0") != "t":
        if time.time() > end:
            sys.exit("6.0.0's first wave did not install")
        time.sleep(1)
    wave1 = int(psql(pg_port, "SELECT count(*) FROM ota.jobs j JOIN ota.rollouts r ON r.id = j.rollout_id"
                              " WHERE r.firmware = '6.0.0' AND j.wave = 0"))
    total = int(psql(pg_port, "SELECT count(*) FROM ota.jobs j JOIN ota.rollouts r ON r.id = j.rollout_id"
                              " WHERE r.firmware = '6.0.0'"))
    n0, s0 = evals()
    r0 = rpc()
    c = sample()
    time.sleep(60)
    d = sample()
    n1, s1 = evals()
    r1 = rpc()
    n = max(1.0, n1 - n0)
    print(f"health gate, cost: {n:.0f} evaluations in 60 s over {wave1} updated devices and"
          f" {total - wave1} in the control group; {1000 * (s1 - s0) / n:.0f} ms each"
          " (ota's wall time: cohorts, twin's and ingest's answers, the update)", flush=True)
    for k in a:
        base, gated = b[k] - a[k], d[k] - c[k]
        print(f"  {k:9s} CPU-s in 60 s: {base:.2f} before, {gated:.2f} with the gate evaluating;"
              f" {1000 * (gated - base) / n:+.0f} ms an evaluation", flush=True)
    for k, name in ((0, "twin"), (1, "ingest")):
        calls, secs = r1[k][0] - r0[k][0], r1[k][1] - r0[k][1]
        print(f"  {name}: {calls:.0f} RPCs in the minute, {1000 * secs / max(1.0, calls):.0f} ms each"
              " (their query's time in PostgreSQL, nearly all of it)", flush=True)
    print("  queries an evaluation: ota 3 (its last time, the jobs, the stored verdict), twin 1"
          " (HEALTH_STATS), ingest 1 a metric signal; the CPU difference also holds the running"
          " rollout's own ticks (4 a second), which the minute before did not have", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--image-size", type=int, default=256 * 1024)
    ap.add_argument("--install-time", default="2s")
    ap.add_argument("--max-per-minute", type=int, default=600000)
    ap.add_argument("--sim-workers", type=int, default=8, help="motesim's download/verify threads")
    ap.add_argument("--build", default="build")
    ap.add_argument("--aws-jobs", action="store_true", help="AWS IoT jobs instead of firmware (3.)")
    ap.add_argument("--health", action="store_true", help="health gates instead of 1. and 2. (4.)")
    ap.add_argument("--online-timeout", type=int, default=300,
                    help="seconds to wait for every device to come online (motesim connects"
                         " about 50 a second at 10,000 here)")
    args = ap.parse_args()
    stack, pg_port, broker, broker_port = setup(args, "motehub-bench-ota-", plugin=args.aws_jobs)
    work = stack.work
    pg_url = f"host=127.0.0.1 port={pg_port} user=postgres dbname=bench"
    try:
        key, pub = os.path.join(work, "fleet-signing.pem"), os.path.join(work, "fleet-signing.pub.pem")
        subprocess.check_call(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key])
        subprocess.check_call(["openssl", "pkey", "-in", key, "-pubout", "-out", pub])
        ing_port, ing_rpc, ing_http = start_ingest(stack, pg_url, rpc=True)
        dl = f"tcp://127.0.0.1:{free_port()}"
        _, (t_port, t_rpc, t_ev, t_http) = start_twin(stack, pg_url, dl)
        o_port, o_rpc, o_http = free_port(), free_port(), free_port()
        stack.spawn("ota", [
            os.path.join(stack.bin, "services/ota/motehub-ota"), f"--http-listen=127.0.0.1:{o_http}",
            f"--public-url=http://127.0.0.1:{o_http}", f"--bind=tcp://127.0.0.1:{o_port}",
            f"--rpc-bind=tcp://127.0.0.1:{o_rpc}", "--events-bind=", f"--downlink-endpoint={dl}",
            f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}", f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}",
            f"--pg-url={pg_url}", f"--signing-key={key}", f"--ingest-rpc-endpoint=tcp://127.0.0.1:{ing_rpc}"])
        wait_ready(o_http, "ota")
        gw_http = free_port()
        stack.spawn("gateway", [
            os.path.join(stack.bin, "services/gateway/motehub-gateway"), f"--http-listen=127.0.0.1:{gw_http}",
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--ingest-endpoint=tcp://127.0.0.1:{ing_port}",
            "--events-bind=", f"--downlink-bind={dl}", f"--twin-endpoint=tcp://127.0.0.1:{t_port}",
            f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}", f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}",
            f"--ota-endpoint=tcp://127.0.0.1:{o_port}"])
        wait_ready(gw_http, "gateway")
        sim = stack.spawn("motesim", [
            os.path.join(stack.bin, "tools/motesim/motesim"), f"--mqtt-url=tcp://127.0.0.1:{broker_port}",
            f"--devices={args.devices}", "--prefix=o", f"--register=tcp://127.0.0.1:{t_rpc}",
            "--firmware=1.0.0", f"--ota-key={pub}", "--ota-fail=3.0.0:0.08",
            f"--ota-install-time={args.install_time}", f"--ota-workers={args.sim_workers}",
            "--interval=60s" if args.health else "--interval=1h", "--report=30s",
            f"--aws={'true' if args.aws_jobs else 'false'}", "--misbehave=5.0.0:0.3:reconnect",
            # the AWS devices' job path alone: no shadow report on every connect
            f"--twin={'false' if args.aws_jobs else 'true'}",
            "--connect-rate=2000"])
        end = time.time() + args.online_timeout
        while int(psql(pg_port, "SELECT count(*) FROM twin.devices WHERE online AND firmware = '1.0.0'")
                  or 0) < args.devices:
            if time.time() > end or sim.poll() is not None:
                sys.exit(f"the devices did not all come online; see {work}")
            time.sleep(1)
        print(f"# {args.devices} motesim devices (MQTT 5, {args.sim_workers} download threads), images of "
              f"{args.image_size} bytes, install time {args.install_time}, maxPerMinute {args.max_per_minute}; mosquitto, gateway, twin, "
              f"ota, PostgreSQL 15 and motesim on one machine; logs in {work}", flush=True)
        bench = os.path.join(stack.bin, "tools/bench/ota_bench")
        settle(gw_http)
        common = [f"--rpc=tcp://127.0.0.1:{o_rpc}", f"--pg-url={pg_url}"]
        if args.health:
            health_bench(args, stack, pg_port, {"ota": o_http, "twin": t_http, "ingest": ing_http},
                         common, bench)
            return
        if args.aws_jobs:
            t0 = time.time()
            subprocess.check_call([bench] + common + [
                "--rollout={\"document\":{\"operation\":\"rotate-logs\"},"
                "\"waves\":[{\"percent\":100}],\"soakSeconds\":0,"
                f"\"maxPerMinute\":{args.max_per_minute},\"jobTimeoutSeconds\":600}}", "--until=completed"])
            took = time.time() - t0
            sim.send_signal(2)
            sim.wait(300)
            stack.procs.remove(sim)
            with open(os.path.join(work, "motesim.log")) as f:
                m = re.search(r"motesim: aws_jobs done=(\d+) first_ms=(\d+) last_ms=(\d+)", f.read())
            if not m:
                sys.exit(f"motesim printed no AWS jobs summary; see {work}")
            done, span = int(m.group(1)), (int(m.group(3)) - int(m.group(2))) / 1000 or 1
            print(f"AWS IoT jobs: {done} of {args.devices} devices ran the job (notify-next, then "
                  f"SUCCEEDED); {done / span:.0f} jobs/s from the first device's start to the last's; "
                  f"the rollout completed {took:.1f} s after it was created", flush=True)
            return
        subprocess.check_call([bench] + common + [
            f"--upload=1.0.0:{args.image_size},2.0.0:{args.image_size},3.0.0:{args.image_size}",
            "--rollout={\"firmware\":\"2.0.0\",\"target\":{\"firmware\":\"1.0.0\"},"
            "\"waves\":[{\"percent\":1},{\"percent\":10},{\"percent\":100}],\"soakSeconds\":5,"
            f"\"maxPerMinute\":{args.max_per_minute},\"jobTimeoutSeconds\":600}}", "--until=completed"])
        end = time.time() + 120
        while int(psql(pg_port, "SELECT count(*) FROM twin.devices WHERE firmware = '2.0.0'") or 0) < args.devices:
            if time.time() > end:
                sys.exit(f"the devices did not all report 2.0.0; see {work}")
            time.sleep(1)
        settle(gw_http)
        # The gate judges the canary once half of it has finished (at most 500).
        min_done = max(1, min(500, args.devices // 20))
        subprocess.check_call([bench] + common + [
            "--rollout={\"firmware\":\"3.0.0\",\"target\":{\"firmware\":\"2.0.0\"},"
            "\"waves\":[{\"percent\":10},{\"percent\":50},{\"percent\":100}],\"soakSeconds\":5,"
            f"\"failureThreshold\":0.05,\"minDevicesPerWave\":{min_done},\"onFailure\":\"rollback\","
            f"\"maxPerMinute\":{args.max_per_minute},\"jobTimeoutSeconds\":600}}", "--until=rolled_back"])
        sim.send_signal(2)
        sim.wait(300)
        stack.procs.remove(sim)
        with open(os.path.join(work, "motesim.log")) as f:
            m = re.search(r"motesim: ota jobs=.*", f.read())
            print(m.group(0) if m else "motesim printed no OTA summary")
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
