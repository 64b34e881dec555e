#!/usr/bin/env python3
"""Telemetry-path benchmark: the real pipeline (motesim -> mosquitto ->
gateway(s) -> ingest(s) -> PostgreSQL) at fixed QoS1 rates, 3 metrics per
message, and for each rate the bare-broker baseline (the same publishers to a
mosquitto_sub that discards), so the ratio shows.

Prints per rate: delivered msg/s, p50/p99 latency from publish to committed
row (from ingest's mh_ingest_point_lag_seconds histogram; motesim stamps each
sample with its publish time), lost and duplicated samples, and CPU seconds
per 1,000 messages for each process.

    tools/bench/telemetry.py --rates 5000,10000,20000,30000 --duration 30
    tools/bench/telemetry.py --rates 30000 --gateways 2 --ingests 2
    tools/bench/telemetry.py --rates 20000 --curve     # gateway -> ingest over CURVE
    tools/bench/telemetry.py --rates 5000,10000 --kafka # + the cold path (kafka-mock)

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = 3


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def postgres_pids():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def postgres_cpu(baseline):
    """CPU of all postgres processes; processes that ended keep what they had."""
    total = 0.0
    for pid in postgres_pids():
        total += cpu_seconds(pid) - baseline.get(pid, 0.0)
    return total


def postgres_by_process(pg_port, baseline, per_msg):
    """PostgreSQL's CPU a message by process: its backend type, and for a
    client's backend the program's name and the start of its last statement
    (which of ingest's connections it is)."""
    what = {}
    for line in psql(pg_port, "SELECT pid, backend_type, coalesce(application_name, ''), "
                              "left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 40) "
                              "FROM pg_stat_activity").splitlines():
        pid, btype, app, query = (line.split("|", 3) + ["", "", ""])[:4]
        what[int(pid)] = btype if btype != "client backend" else f"{app.split('-')[0]}: {query}"
    parts = []
    for pid in postgres_pids():
        used = cpu_seconds(pid) - baseline.get(pid, 0.0)
        if used * 1e6 / per_msg >= 0.1:
            parts.append((used, what.get(pid, "postmaster" if pid not in what else "?")))
    parts.sort(reverse=True)
    return "; ".join(f"{name} {used * 1e6 / per_msg:.1f}" for used, name in parts)


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def counter(text, name):
    """The sum of a Prometheus counter's series."""
    return sum(float(m.group(1)) for m in re.finditer(r'^%s(?:\{[^}]*\})? (\S+)$' % name, text, re.M))


def histogram(text, name):
    """Cumulative buckets [(le, count)] of a Prometheus histogram."""
    out = []
    for m in re.finditer(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % name, text, re.M):
        # bounds in milliseconds, as the tables print them
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1)) * 1000
        out.append((le, float(m.group(2))))
    return out


def quantile(before, after, q):
    buckets = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


class Stack:
    def __init__(self, args, work):
        self.args, self.work, self.procs = args, work, []
        self.bin = os.path.join(ROOT, args.build)

    def spawn(self, name, argv):
        log = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=30):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


def build(args):
    """Installs what is missing and builds (release) into args.build."""
    subprocess.check_call([os.path.join(ROOT, "tools/install-deps.sh")])
    if not os.path.exists(os.path.join(ROOT, args.build, "build.ninja")):
        subprocess.check_call(["meson", "setup", args.build, "--buildtype=release"], cwd=ROOT,
                              stdout=subprocess.DEVNULL)
    subprocess.check_call(["ninja", "-C", args.build], cwd=ROOT, stdout=subprocess.DEVNULL)


def setup(args, prefix, plugin=False):
    """Installs what is missing, builds (release), and starts a private
    PostgreSQL (database "bench") and mosquitto on free loopback ports; with
    `plugin` the broker loads Motehub's plugin as deployed (motehub_acl.so,
    anonymous loopback clients allowed), which the AWS IoT topics need.
    Returns (stack, pg_port, broker, broker_port); call teardown(stack)."""
    build(args)
    work = tempfile.mkdtemp(prefix=prefix)
    os.chmod(work, 0o755)
    stack = Stack(args, work)
    pg_port, broker_port = free_port(), free_port()
    stack.pgdir = os.path.join(work, "pg")
    subprocess.check_call([os.path.join(ROOT, "tests/lib/pg-cluster.sh"), "start", stack.pgdir, str(pg_port)])
    try:
        subprocess.check_call(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-d",
                               "postgres", "-qc", "CREATE DATABASE bench"])
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
                    "log_dest stderr\nlog_type error\n" + ("user root\n" if os.getuid() == 0 else ""))
            if plugin:
                f.write(f"plugin {os.path.join(ROOT, args.build, 'services/broker-acl/motehub_acl.so')}\n"
                        "plugin_opt_anonymous allow\n")
        broker = stack.spawn("mosquitto", ["mosquitto", "-c", conf])
        time.sleep(0.5)
    except BaseException:
        teardown(stack)
        raise
    return stack, pg_port, broker, broker_port


def teardown(stack):
    stack.stop_all()
    subprocess.call([os.path.join(ROOT, "tests/lib/pg-cluster.sh"), "stop", stack.pgdir])


def psql(pg_port, sql):
    return subprocess.check_output(
        ["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-d", "bench", "-Atqc", sql],
        text=True).strip()


def wait_ready(port, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            http_get(port, "/readyz")
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} did not become ready")


def start_ingest(stack, pg_url, rpc=False, name="ingest", extra=()):
    """One ingest on free ports, ready; its (batch port, RPC port or None, HTTP port)."""
    port, http = free_port(), free_port()
    rpc_port = free_port() if rpc else None
    stack.spawn(name, [os.path.join(stack.bin, "services/ingest/motehub-ingest"),
                       f"--http-listen=127.0.0.1:{http}", f"--bind=tcp://127.0.0.1:{port}", "--events-bind=",
                       f"--rpc-bind=tcp://127.0.0.1:{rpc_port}" if rpc else "--rpc-bind=", f"--pg-url={pg_url}",
                       *extra])
    wait_ready(http, name)
    return port, rpc_port, http


def start_twin(stack, pg_url, downlink, name="twin"):
    """One twin on free ports, sending downlinks to `downlink`, ready; its process and
    (device-message port, RPC port, events port, HTTP port)."""
    port, rpc, ev, http = free_port(), free_port(), free_port(), free_port()
    p = stack.spawn(name, [os.path.join(stack.bin, "services/twin/motehub-twin"), f"--http-listen=127.0.0.1:{http}",
                           f"--bind=tcp://127.0.0.1:{port}", f"--rpc-bind=tcp://127.0.0.1:{rpc}",
                           f"--events-bind=tcp://127.0.0.1:{ev}", f"--downlink-endpoint={downlink}",
                           f"--pg-url={pg_url}"])
    wait_ready(http, name)
    return p, (port, rpc, ev, http)


def run_publishers(stack, broker_port, rate, tag, generator=None):
    """The load: moteload (one process, --publishers threads) or motesim
    (--publishers processes); returns their processes."""
    a = stack.args
    generator = generator or a.generator[0]
    if generator == "moteload":
        return [stack.spawn(f"{generator}-{tag}-0", [
            os.path.join(stack.bin, "tools/moteload/moteload"),
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--prefix=b{tag}", f"--devices={a.devices}",
            f"--rate={rate}", f"--duration={a.duration}s", f"--metrics={METRICS}", "--report=0",
            f"--threads={a.publishers}"])]
    per_rate, per_dev = rate / a.publishers, a.devices // a.publishers
    pubs = []
    for i in range(a.publishers):
        pubs.append(stack.spawn(f"{generator}-{tag}-{i}", [
            os.path.join(stack.bin, "tools/motesim/motesim"),
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--prefix=b{tag}p{i}",
            f"--devices={per_dev}", f"--rate={per_rate}", f"--duration={a.duration}s",
            f"--metrics={METRICS}", "--report=0", "--connect-rate=2000", "--twin=false"]))
    return pubs


def wait_publishers(pubs, tick=None):
    """Waits for the publishers; returns the CPU seconds each used (read
    while it still runs, as /proc forgets a process once it is reaped).
    Calls tick() every 0.2 s meanwhile."""
    cpu = {}
    while any(p.poll() is None for p in pubs):
        for p in pubs:
            if p.poll() is None:
                cpu[p.pid] = cpu_seconds(p.pid)
        if tick:
            tick()
        time.sleep(0.2)
    return cpu


def publisher_results(stack, pubs, tag, generator=None):
    """(published, acked, PUBACK p50, p99 in ms or None) from the publishers' logs."""
    generator = generator or stack.args.generator[0]
    acked = published = 0
    p50 = p99 = None
    for i, p in enumerate(pubs):
        p.wait()
        stack.procs.remove(p)
        with open(os.path.join(stack.work, f"{generator}-{tag}-{i}.log")) as f:
            text = f.read()
        m = re.findall(r"published=(\d+) acked=(\d+)", text)
        if m:
            published += int(m[-1][0])
            acked += int(m[-1][1])
        lat = re.findall(r"puback_p50_ms=(\S+) puback_p99_ms=(\S+)", text)
        if lat:
            p50, p99 = float(lat[-1][0]), float(lat[-1][1])
    return published, acked, p50, p99


def sink_span(path):
    """Seconds from the sink's first message to its last (it prints each
    message's arrival time, %U)."""
    first = last = None
    with open(path, "rb") as f:
        for line in f:
            try:
                t = float(line)
            except ValueError:
                continue
            first = t if first is None else first
            last = t
    return (last - first) if first is not None and last > first else None


def baseline(stack, broker, broker_port, rate, generator):
    """Same publishers, a subscriber that discards."""
    out = os.path.join(stack.work, f"sub-{rate}.out")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker_port), "-q", "1",
                            "-t", "devices/+/telemetry", "-i", f"sink-{rate}", "-F", "%U"],
                           stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    c0 = {"mosquitto": cpu_seconds(broker.pid), "sink": cpu_seconds(sub.pid)}
    t0 = time.time()
    pubs = run_publishers(stack, broker_port, rate, f"base{rate}", generator)
    pub_cpu = wait_publishers(pubs)
    published, acked, p50, p99 = publisher_results(stack, pubs, f"base{rate}", generator)
    time.sleep(1)
    cpu = {"mosquitto": cpu_seconds(broker.pid) - c0["mosquitto"],
           "sink": cpu_seconds(sub.pid) - c0["sink"], generator: sum(pub_cpu.values())}
    sub.send_signal(signal.SIGTERM)
    sub.wait()
    got = sum(1 for _ in open(out, "rb"))
    span = sink_span(out)
    return {"published": published, "acked": acked, "received": got, "p50": p50, "p99": p99,
            "rate": got / (span or stack.args.duration), "cpu": cpu}


def pipeline(stack, broker, broker_port, pg_port, rate):
    a = stack.args
    ingests, gateways, endpoints = [], [], []
    for i in range(a.ingests):
        port, http = free_port(), free_port()
        endpoints.append(f"tcp://127.0.0.1:{port}")
        p = stack.spawn(f"ingest-{rate}-{i}", [
            os.path.join(stack.bin, "services/ingest/motehub-ingest"), f"--http-listen=127.0.0.1:{http}",
            f"--bind=tcp://127.0.0.1:{port}", "--events-bind=", "--rpc-bind=",
            f"--pg-url=host=127.0.0.1 port={pg_port} user=postgres dbname=bench"]
            + ([f"--kafka-brokers={stack.kafka}"] if getattr(stack, "kafka", None) else []))
        wait_ready(http, "ingest")
        ingests.append((p, http))
    # the raw tier's table: ingest.samples (ingest.telemetry_raw is a view of it since issue 19)
    raw_table = "ingest.samples" if psql(pg_port, "SELECT to_regclass('ingest.samples')") else "ingest.telemetry_raw"
    psql(pg_port, f"TRUNCATE {raw_table}, ingest.rollup_1m, ingest.rollup_1h, "
                  "ingest.batches, ingest.rollup_dirty")
    for i in range(a.gateways):
        http = free_port()
        p = stack.spawn(f"gateway-{rate}-{i}", [
            os.path.join(stack.bin, "services/gateway/motehub-gateway"), f"--http-listen=127.0.0.1:{http}",
            f"--mqtt-url=tcp://127.0.0.1:{broker_port}", f"--ingest-endpoint={','.join(endpoints)}",
            "--events-bind=", "--check-registered=false", "--twin-endpoint=", "--downlink-bind=", "--ota-endpoint="])
        wait_ready(http, "gateway")
        gateways.append((p, http))
    hist0 = [histogram(http_get(h, "/metrics"), "mh_ingest_point_lag_seconds") for _, h in ingests]
    pg0 = {pid: cpu_seconds(pid) for pid in postgres_pids()}
    c0 = {"mosquitto": cpu_seconds(broker.pid)}
    kp = getattr(stack, "kafka_proc", None)
    if kp:
        c0["kafka-mock"] = cpu_seconds(kp.pid)
    for i, (p, _) in enumerate(gateways):
        c0[f"gateway{i}"] = cpu_seconds(p.pid)
    for i, (p, _) in enumerate(ingests):
        c0[f"ingest{i}"] = cpu_seconds(p.pid)
    t0 = time.time()
    pubs = run_publishers(stack, broker_port, rate, f"pipe{rate}")
    # the points stored, as the ingests count them (not asked of PostgreSQL,
    # whose CPU is being measured): when the first was stored, when the count
    # last grew
    seen = {"first": None, "last": -1, "last_change": time.time()}

    def stored():
        n = sum(counter(http_get(h, "/metrics"), "mh_ingest_points_stored_total") for _, h in ingests)
        if n > 0 and seen["first"] is None:
            seen["first"] = time.time()
        if n != seen["last"]:
            seen["last"], seen["last_change"] = n, time.time()
    pub_cpu = wait_publishers(pubs, stored)
    published, acked, _, _ = publisher_results(stack, pubs, f"pipe{rate}")
    pub_end = time.time()
    # wait until the points stored stop growing (the pipeline drained)
    while time.time() - seen["last_change"] < 3 and time.time() - t0 < a.duration + 120:
        stored()
        time.sleep(0.2)
    last_change = seen["last_change"]
    tail = max(0.0, last_change - pub_end)
    cpu = {"mosquitto": cpu_seconds(broker.pid) - c0["mosquitto"], a.generator[0]: sum(pub_cpu.values()),
           "postgres": postgres_cpu(pg0)}
    if kp:
        cpu["kafka-mock"] = cpu_seconds(kp.pid) - c0["kafka-mock"]
    for i, (p, _) in enumerate(gateways):
        cpu[f"gateway{i}"] = cpu_seconds(p.pid) - c0[f"gateway{i}"]
    for i, (p, _) in enumerate(ingests):
        cpu[f"ingest{i}"] = cpu_seconds(p.pid) - c0[f"ingest{i}"]
    pg_detail = postgres_by_process(pg_port, pg0, acked or 1)
    hist1 = [histogram(http_get(h, "/metrics"), "mh_ingest_point_lag_seconds") for _, h in ingests]
    merged0 = [(b[0][0], sum(x[i][1] for x in hist0)) for i, b in enumerate(zip(*hist0))] if hist0 else []
    merged1 = [(b[0][0], sum(x[i][1] for x in hist1)) for i, b in enumerate(zip(*hist1))] if hist1 else []
    rows = int(psql(pg_port, "SELECT count(*) FROM ingest.telemetry_raw"))
    distinct = int(psql(pg_port, "SELECT count(*) FROM (SELECT DISTINCT device_id, metric, ts "
                                 "FROM ingest.telemetry_raw) d"))
    span = float(psql(pg_port, "SELECT extract(epoch FROM max(ts) - min(ts)) FROM ingest.telemetry_raw") or 1)
    for p, _ in gateways + ingests:
        stack.stop(p)
    return {"published": published, "acked": acked, "rows": rows, "distinct": distinct,
            "lost": max(0, acked * METRICS - distinct), "dup": rows - distinct,
            # stored, though the publisher had not seen its PUBACK when it stopped
            "unacked_stored": max(0, distinct - acked * METRICS),
            # stored messages over the time from the first stored to the last
            "rate": distinct / METRICS / max(last_change - (seen["first"] or t0), 1e-9), "tail": tail,
            "p50": quantile(merged0, merged1, 0.5), "p99": quantile(merged0, merged1, 0.99),
            "cpu": cpu, "pg_detail": pg_detail}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="5000,10000,20000,30000")
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=2, help="moteload threads, or motesim processes")
    ap.add_argument("--generator", default="moteload",
                    help="moteload or motesim; a list (moteload,motesim) runs the bare-broker baseline "
                         "with each and the pipeline with the first")
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--ingests", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--build", default="build")
    ap.add_argument("--kafka", action="store_true",
                    help="ingest also produces every sample to Kafka (librdkafka's mock cluster)")
    ap.add_argument("--curve", action="store_true",
                    help="CURVE on the internal sockets (keys from motectl curve keygen)")
    args = ap.parse_args()
    args.generator = args.generator.split(",")
    if any(g not in ("moteload", "motesim") for g in args.generator):
        sys.exit("--generator: moteload or motesim")
    stack, pg_port, broker, broker_port = setup(args, "motehub-bench-")
    work = stack.work
    if args.kafka:
        # librdkafka's mock cluster in its own process; stdin kept open
        mock = subprocess.Popen([os.path.join(stack.bin, "tools/kafka-mock/kafka-mock")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.procs.append(mock)
        stack.kafka = mock.stdout.readline().strip()
        stack.kafka_proc = mock
    if args.curve:
        keys = os.path.join(work, "curve")
        subprocess.check_call([os.path.join(stack.bin, "tools/motectl/motectl"), "curve", "keygen",
                               "--out", keys], stdout=subprocess.DEVNULL)
        os.environ["MH_CURVE_DIR"] = keys  # every service spawned from here on
    try:
        print(f"# {args.devices} devices, {args.generator[0]} ({args.publishers} "
              f"{'threads' if args.generator[0] == 'moteload' else 'processes'}), QoS1, {METRICS} metrics "
              f"per message, {args.duration} s per rate, {args.gateways} gateway(s), {args.ingests} ingest(s), "
              f"CPU in µs a message (acknowledged), CURVE {'on' if args.curve else 'off'}, "
              f"Kafka {'on' if args.kafka else 'off'}; logs in {work}")
        best = {"baseline": 0.0, "pipeline": 0.0}
        for rate in [int(r) for r in args.rates.split(",")]:
            base_rate = None
            for g in ([] if args.no_baseline else args.generator):
                b = baseline(stack, broker, broker_port, rate, g)
                per_msg = b["acked"] or 1
                if g == args.generator[0]:
                    base_rate = b["rate"]
                    best["baseline"] = max(best["baseline"], b["rate"])
                lat = f", PUBACK p50 {b['p50']:.1f} ms p99 {b['p99']:.1f} ms" if b["p50"] is not None else ""
                print(f"baseline rate={rate} ({g}): delivered {b['rate']:.0f} msg/s "
                      f"(published {b['published']}, received {b['received']}{lat}); CPU µs/msg: "
                      + ", ".join(f"{k} {v * 1e6 / per_msg:.1f}" for k, v in b["cpu"].items()), flush=True)
            r = pipeline(stack, broker, broker_port, pg_port, rate)
            best["pipeline"] = max(best["pipeline"], r["rate"])
            per_msg = r["acked"] or 1
            own = sum(v for k, v in r["cpu"].items() if k.startswith(("gateway", "ingest", "postgres")))
            ratio = f", {r['rate'] / base_rate:.2f} of the bare broker" if base_rate else ""
            print(f"pipeline rate={rate}: delivered {r['rate']:.0f} msg/s{ratio}, latency p50 {r['p50']:.1f} ms "
                  f"p99 {r['p99']:.1f} ms, lost {r['lost']} dup {r['dup']} samples "
                  f"(+{r['unacked_stored']} stored before their PUBACK reached the publisher) "
                  f"(acked {r['acked']} msgs, {r['distinct']} samples stored, last commit {r['tail']:.1f} s "
                  f"after publishing ended); CPU µs/msg: "
                  + ", ".join(f"{k} {v * 1e6 / per_msg:.1f}" for k, v in r["cpu"].items())
                  + f"; Motehub (gateway + ingest + PostgreSQL) {own * 1e6 / per_msg:.1f}", flush=True)
            print(f"  PostgreSQL by process, µs/msg: {r['pg_detail']}", flush=True)
        if not args.no_baseline:
            print(f"saturation: bare broker {best['baseline']:.0f} msg/s, pipeline {best['pipeline']:.0f} msg/s "
                  f"({best['pipeline'] / (best['baseline'] or 1):.2f} of the bare broker)", flush=True)
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
