#!/usr/bin/env python3
"""Telemetry storage benchmark (issue 19): what a sample costs in each tier,
how fast sealed hours compress, and what a query of raw data costs before
and after.

1. `--devices` devices with motesim's three default metrics (temperature to
   0.01 on a daily curve with noise, humidity to 0.1, a slowly draining
   battery to 0.1) every `--interval` seconds with a few milliseconds of
   publish jitter, for `--days`, written into the raw tier as the hot path
   leaves them (rows and rollup markers), the rollups computed.
2. The raw tier's bytes a sample (heap + indexes), and the rollups'.
3. Query times through the operator API (fleet-stats -> ingest): one
   device-day of raw data (and a device-week with --days >= 7), before.
4. An ingest with compression on seals every hour, then joins each sealed
   day's hourly blocks into one a series: samples per second of both (its
   own CPU), the blocks' bytes a sample (data, and with PostgreSQL's row
   and index overhead), rows left.
5. The same queries after, and a check that they answered the same.

    tools/bench/storage.py --devices 1000 --days 1
    tools/bench/storage.py --devices 1000 --days 7      # the issue's week

Everything runs on 127.0.0.1 on free ports and stops at the end.
"""
import argparse, json, os, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from telemetry import cpu_seconds, free_port, http_get, psql, setup, start_ingest, start_twin, teardown, wait_ready  # noqa: E402

HOUR = 3600 * 1000


def api_get(port, token, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def query_all(port, token, device, frm, to):
    """Every raw point of a device's range, following the cursor; (points, seconds)."""
    t0, pts, cursor = time.time(), [], None
    while True:
        path = f"/api/v1/devices/{device}/telemetry?bucket=raw&limit=100000&from={frm}&to={to}"
        if cursor:
            path += f"&cursor={urllib.request.quote(cursor)}"
        v = api_get(port, token, path)
        for s in v["series"]:
            pts.extend((s["metric"], p[0], p[1]) for p in s["points"])
        cursor = v.get("next")
        if not cursor:
            return pts, time.time() - t0


def size(pg_port, parent):
    """Heap + index (+ TOAST) bytes of a partitioned table's partitions, at every level."""
    return int(psql(pg_port, f"SELECT coalesce(sum(pg_total_relation_size(relid)), 0)"
                             f" FROM pg_partition_tree('ingest.{parent}')") or 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--interval", type=int, default=30, help="seconds between a device's samples")
    ap.add_argument("--build", default="build")
    ap.add_argument("--no-rollups", action="store_true",
                    help="skip the rollups (a week's 10,080 minutes take the rollup job ~25 min here)")
    args = ap.parse_args()
    stack, pg_port, _, broker_port = setup(args, "motehub-bench-storage-")
    work = stack.work
    pg_url = f"host=127.0.0.1 port={pg_port} user=postgres dbname=bench"
    b = lambda p: os.path.join(stack.bin, p)  # noqa: E731
    try:
        # the ingest that answers queries never compresses: step 4's does
        _, ing_rpc, _ = start_ingest(stack, pg_url, rpc=True, extra=["--compress-interval=0", f"--retention-raw={args.days + 2}d"])
        dl = f"tcp://127.0.0.1:{free_port()}"
        _, (t_port, t_rpc, t_ev, _) = start_twin(stack, pg_url, dl)
        subprocess.check_call([b("tools/motesim/motesim"), f"--devices={args.devices}", "--prefix=st",
                               f"--register=tcp://127.0.0.1:{t_rpc}", "--register-only=true"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        key = os.path.join(work, "k.pem")
        subprocess.check_call(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key])
        o_rpc, o_ev, o_http = free_port(), free_port(), free_port()
        stack.spawn("ota", [b("services/ota/motehub-ota"), f"--http-listen=127.0.0.1:{o_http}",
                            f"--public-url=http://127.0.0.1:{o_http}", f"--bind=tcp://127.0.0.1:{free_port()}",
                            f"--rpc-bind=tcp://127.0.0.1:{o_rpc}", f"--events-bind=tcp://127.0.0.1:{o_ev}",
                            f"--downlink-endpoint={dl}", f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}",
                            f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}", f"--pg-url={pg_url}",
                            f"--signing-key={key}"])
        wait_ready(o_http, "ota")
        token = subprocess.check_output([b("services/fleet-stats/motehub-fleet-stats"), "create-token", "bench",
                                         f"--pg-url={pg_url}"], text=True).strip()
        api, fs_http = free_port(), free_port()
        stack.spawn("fleet-stats", [b("services/fleet-stats/motehub-fleet-stats"), f"--http-listen=127.0.0.1:{fs_http}",
                                    f"--api-listen=127.0.0.1:{api}", f"--pg-url={pg_url}",
                                    f"--twin-rpc-endpoint=tcp://127.0.0.1:{t_rpc}",
                                    f"--ota-rpc-endpoint=tcp://127.0.0.1:{o_rpc}",
                                    f"--ingest-rpc-endpoint=tcp://127.0.0.1:{ing_rpc}",
                                    f"--twin-events-endpoint=tcp://127.0.0.1:{t_ev}",
                                    f"--ota-events-endpoint=tcp://127.0.0.1:{o_ev}", "--gateway-events-endpoint="])
        wait_ready(fs_http, "fleet-stats")

        now = int(time.time() * 1000)
        to = now - now % (24 * HOUR)  # whole UTC days, all sealed
        frm = to - args.days * 24 * HOUR
        per_day = 86400 // args.interval
        t0 = time.time()
        psql(pg_port, f"INSERT INTO ingest.device_ids (device_id) SELECT format('st-%s', lpad(d::text, 4, '0'))"
                      f" FROM generate_series(0, {args.devices - 1}) d")
        mset = psql(pg_port, "INSERT INTO ingest.metric_sets (metrics) VALUES ('{temperature,humidity,battery}')"
                             " RETURNING id")
        for day in range(args.days):
            lo = frm + day * 24 * HOUR
            # as the hot path writes them: a row per device message, its three values in one array
            psql(pg_port, f"""
                INSERT INTO ingest.samples (ts, device, metric_set, value)
                SELECT to_timestamp(({lo} + k::bigint * {args.interval * 1000} + (random() * 20)::int) / 1000.0),
                       i.id, {mset},
                       ARRAY[round((18 + (d % 7) + 4 * sin(2 * pi() * (((k * {args.interval}) / 3600.0) % 24 - 9) / 24)
                                    + random() - 0.5)::numeric, 2)::float8,
                             round((45 + 10 * cos(2 * pi() * ((k * {args.interval}) / 3600.0 % 24) / 24)
                                    + (random() - 0.5) * 4)::numeric, 1)::float8,
                             round((100 - (d % 40) - ({day} * {per_day} + k) * 0.00025)::numeric, 1)::float8]
                FROM generate_series(0, {args.devices - 1}) d
                JOIN ingest.device_ids i ON i.device_id = format('st-%s', lpad(d::text, 4, '0')),
                     generate_series(0, {per_day - 1}) k""")
            if not args.no_rollups:
                psql(pg_port, f"INSERT INTO ingest.rollup_dirty (tier, bucket) SELECT '1m', generate_series("
                              f"to_timestamp({lo} / 1000.0), to_timestamp({lo + 24 * HOUR} / 1000.0)"
                              f" - interval '1 minute', interval '1 minute')")
        samples = int(psql(pg_port, "SELECT sum(array_length(value, 1)) FROM ingest.samples"))
        print(f"# {samples} samples ({args.devices} devices x 3 metrics, every {args.interval} s, {args.days} day(s))"
              f" written in {time.time() - t0:.0f} s; PostgreSQL 15 and Motehub on this machine; logs in {work}",
              flush=True)
        end = time.time() + 3600
        while int(psql(pg_port, "SELECT count(*) FROM ingest.rollup_dirty")) and time.time() < end:
            time.sleep(2)
        psql(pg_port, "VACUUM ANALYZE")
        raw_bytes = size(pg_port, "samples")
        m1, h1 = size(pg_port, "rollup_1m"), size(pg_port, "rollup_1h")
        print(f"raw tier: {raw_bytes / samples:.1f} bytes a sample (heap + indexes, {raw_bytes / 1e6:.0f} MB)")
        if args.no_rollups:
            print("rollups: skipped (--no-rollups)", flush=True)
        else:
            print(f"rollups: 1-minute {m1 / samples:.2f} bytes a raw sample ({m1 / 1e6:.0f} MB), "
                  f"1-hour {h1 / samples:.3f} ({h1 / 1e6:.1f} MB)", flush=True)

        ranges = [("device-day", to - 24 * HOUR, to)] + ([("device-week", to - 7 * 24 * HOUR, to)] if args.days >= 7 else [])
        before = {}
        for name, a, z in ranges:
            query_all(api, token, "st-0007", a, z)  # warm
            pts, secs = query_all(api, token, "st-0007", a, z)
            before[name] = pts
            print(f"query {name} raw before: {len(pts)} points in {secs * 1000:.0f} ms", flush=True)

        ing_http = free_port()
        comp = stack.spawn("ingest-compress", [
            b("services/ingest/motehub-ingest"), f"--http-listen=127.0.0.1:{ing_http}",
            f"--bind=tcp://127.0.0.1:{free_port()}", "--events-bind=", "--rpc-bind=", f"--pg-url={pg_url}",
            "--compress-interval=1s", "--seal-lag=1s", f"--retention-raw={args.days + 2}d"])
        wait_ready(ing_http, "ingest-compress")
        cpu0, t0 = cpu_seconds(comp.pid), time.time()
        # sealed hours become blocks, then each day's hourly blocks one block a day, then the
        # partitions that emptied are truncated (the next pass after; the steady state)
        while time.time() < end and int(psql(pg_port, "SELECT (SELECT count(*) FROM ingest.samples)"
                                                      " + (SELECT count(*) FROM ingest.telemetry_blocks"
                                                      " WHERE hours < 24) + (SELECT count(*) FROM"
                                                      " (SELECT relid FROM pg_partition_tree('ingest.samples')"
                                                      " UNION ALL SELECT relid FROM pg_partition_tree("
                                                      "'ingest.telemetry_blocks_hour')) p"
                                                      " WHERE pg_total_relation_size(relid) > 65536)")):
            time.sleep(1)
        took, cpu = time.time() - t0, cpu_seconds(comp.pid) - cpu0
        psql(pg_port, "VACUUM ANALYZE")
        blocks = int(psql(pg_port, "SELECT count(*) FROM ingest.telemetry_blocks"))
        data = int(psql(pg_port, "SELECT sum(length(data)) FROM ingest.telemetry_blocks"))
        blk_bytes = size(pg_port, "telemetry_blocks")
        raw_after = size(pg_port, "samples")
        print(f"compression: {samples} samples in {took:.1f} s ({samples / took:.0f} samples/s; ingest's CPU "
              f"{cpu:.1f} s: {samples / max(cpu, 0.01):.0f} samples per CPU-second; the rest is PostgreSQL)")
        print(f"sealed tier: {blocks} blocks, {data / samples:.2f} bytes a sample of block data, "
              f"{blk_bytes / samples:.2f} with PostgreSQL's rows and index ({blk_bytes / 1e6:.1f} MB, "
              f"{raw_bytes / blk_bytes:.0f}x smaller than raw); raw partitions after: {raw_after / 1e6:.1f} MB "
              f"(truncated: indexes' metapages)", flush=True)
        per_metric = psql(pg_port, "SELECT string_agg(format('%s %s', metric, round(b, 2)), ', ' ORDER BY metric)"
                                   " FROM (SELECT metric, sum(length(data))::numeric / sum(n) AS b"
                                   " FROM ingest.telemetry_blocks GROUP BY metric) m")
        print(f"sealed tier per metric, bytes a sample of block data: {per_metric}", flush=True)
        for name, a, z in ranges:
            query_all(api, token, "st-0007", a, z)
            pts, secs = query_all(api, token, "st-0007", a, z)
            same = "the same points" if pts == before[name] else "DIFFERENT points"
            print(f"query {name} raw after: {len(pts)} points in {secs * 1000:.0f} ms ({same})", flush=True)
    finally:
        teardown(stack)


if __name__ == "__main__":
    main()
