#!/usr/bin/env bash
# The compose stack for real (issue 17; docs/deploy.md): docker-compose.yml
# started with podman-compose, with tests/containers/compose.override.yml
# swapping only the registry images (PostgreSQL, Kafka, Prometheus) and
# running two ingest and two twin replicas, then checked from outside as an
# operator would. Prints TAP, one line per check; exits non-zero on any
# failure. Builds what it needs first (images.sh).
#   tests/containers/compose-test.sh            build, run, check, tear down
#   MH_COMPOSE_KEEP=1 tests/containers/compose-test.sh   leave it running
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. tests/containers/lib.sh
project=mhtest
art=${MH_TEST_ARTIFACTS:-$root/tests/artifacts}/compose
mkdir -p "$art"
compose() { podman-compose -p "$project" -f docker-compose.yml -f tests/containers/compose.override.yml "$@"; }

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do [ -n "$l" ] && printf '%s\n' "$l" | sed 's/^/# /'; done; }
# On a failed check: every container's log as it is now (teardown's copies
# come after a down and up, which recreates them), and the warnings and
# failed API requests among them — CI shows only the end of the output.
snapshot() {
    local dir=$art/at-check-$1 c
    mkdir -p "$dir"
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
        podman logs "$c" > "$dir/$c.log" 2>&1
    done
    grep -h -E ' (warn|error) | (5[0-9][0-9]) [0-9]+ms' "$dir"/*.log 2>/dev/null | sort | tail -8
}
check() { # check "what" command...: ok when the command succeeds
    local what=$1; shift
    local out
    if out=$("$@" 2>&1); then
        ok "$what"
    else
        not_ok "$what" "$(printf '%s' "$out" | tail -12)" "$(snapshot $((n + 1)))"
    fi
}
# polls a command until it succeeds or `secs` pass
wait_for() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $end ] && return 1
        sleep 2
    done
}

# The project's networks, and what aardvark-dns (netavark's DNS) kept of
# them: a network torn down uncleanly leaves its file under
# /run/containers/networks/aardvark-dns (first line: the old gateway), and
# a new network of the same name then gets its DNS served on that old
# address, where no service finds another by name — seen on a machine
# whose /run outlived an interrupted run.
remove_networks() {
    podman network ls -q | grep "^${project}_" | xargs -r podman network rm -f > /dev/null 2>&1
    local f
    for f in /run/containers/networks/aardvark-dns/"${project}"_*; do
        [ -e "$f" ] && ! podman network exists "${f##*/}" && rm -f "$f"
    done
    return 0
}

teardown() {
    compose ps > "$art/ps.txt" 2>&1
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
        podman logs "$c" > "$art/$c.log" 2>&1
    done
    if [ -z "${MH_COMPOSE_KEEP:-}" ]; then
        compose down -v > "$art/down.log" 2>&1
        podman volume ls -q | grep "^${project}_" | xargs -r podman volume rm -f > /dev/null 2>&1
        remove_networks
    fi
}

# ---- images ----
if ! tests/containers/images.sh > "$art/images.log" 2>&1; then
    not_ok "every image builds (Dockerfile targets motehub and broker, and the stand-ins)" \
        "$(tail -20 "$art/images.log")"
    echo "1..$n"
    exit 1
fi
ok "every image builds (Dockerfile targets motehub and broker, and the stand-ins; $(sed -n 's/^== \[ *\([0-9]*\)s\] images ready.*/\1 s/p' "$art/images.log"))"

# a stack left by an interrupted run
compose down -v > /dev/null 2>&1
podman volume ls -q | grep "^${project}_" | xargs -r podman volume rm -f > /dev/null 2>&1
remove_networks
trap teardown EXIT

# ---- up ----
# The device and operator networks are isolated from each other (and the
# management one is internal): docker-compose.yml says so with the bridge
# option `isolate`, which podman-compose 1.0.3 does not pass on, so they
# are made here as it would (docs/deploy.md).
for net in devices operators; do
    podman network create --opt isolate=true --label "io.podman.compose.project=$project" \
        --label "com.docker.compose.project=$project" "${project}_$net" > /dev/null
done
step "compose up"
compose up -d --no-build > "$art/up.log" 2>&1
up_rc=$?
secrets_done() { [ "$(podman inspect -f '{{.State.Status}} {{.State.ExitCode}}' ${project}_secrets_1)" = "exited 0" ]; }
check "compose up starts every service (podman-compose exit $up_rc)" test $up_rc = 0
if [ $up_rc != 0 ]; then
    tail -5 "$art/up.log" | sed 's/^/# /'
    echo "1..$n"
    exit 1
fi
secrets_ok() { wait_for 120 secrets_done || { podman logs --tail 3 ${project}_secrets_1; return 1; }; }
check "the secrets job makes the CA, certificates, CURVE keys and the API token" secrets_ok
token=$(podman logs ${project}_secrets_1 2>/dev/null | sed -n 's/^API token: //p' | tail -1)

readyz() { # container port
    podman exec "$1" curl -fs "http://127.0.0.1:$2/readyz"
}
all_ready() {
    for c in gateway_1:9101 ingest_1:9102 ingest_2:9102 twin_1:9103 twin_2:9103 ota_1:9104 \
             fleet-stats_1:9105; do
        readyz "${project}_${c%%:*}" "${c##*:}" || return 1
    done
}
check "every service's /readyz answers 200 (gateway, ingest ×2, twin ×2, ota, fleet-stats)" \
    wait_for 240 all_ready

api() { # method path [curl args...]
    local m=$1 p=$2; shift 2
    curl -sS --fail-with-body -X "$m" -H "Authorization: Bearer $token" "http://127.0.0.1:8080$p" "$@"
}
check "the API answers with the token through the published port" \
    api GET '/api/v1/devices?limit=1' -w '\n%{http_code} in %{time_total}s\n'
check "the API refuses a request without it" \
    test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/api/v1/devices)" = 401

# the simulated fleet over mutual TLS, and its telemetry
online() { api GET /api/v1/fleet/summary | python3 -c 'import json,sys; d=json.load(sys.stdin)["devices"]; sys.exit(0 if d.get("online",0) >= int(sys.argv[1]) else 1)' "$1"; }
check "the simulated fleet is online over mutual TLS (1,000 devices)" wait_for 240 online 1000
rows() {
    podman exec ${project}_postgres_1 psql -U motehub -d motehub -Atc \
        "SELECT count(*) FROM ingest.telemetry_raw"
}
r0=$(rows)
sleep 10
r1=$(rows)
check "telemetry rows appear ($r0, then $r1 ten seconds later)" test "${r1:-0}" -gt "${r0:-0}"
dev=$(api GET '/api/v1/devices?limit=1' | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
latest() {
    local out
    out=$(api GET "/api/v1/devices/$dev/telemetry/latest" -w '\n%{http_code} in %{time_total}s') &&
        grep -q '"value"' <<< "$out" && return 0
    printf '%s\n' "$out"
    return 1
}
check "a device's telemetry through the API ($dev)" latest


# ---- the dashboard ----
check "the dashboard loads in Chromium and counts the fleet" \
    node tests/containers/dashboard-check.mjs http://127.0.0.1:8080 "$token" 1000 "$art/dashboard.png"

# ---- a firmware rollout, followed on the live feed ----
step "rollout"
node --experimental-websocket tests/containers/live-follow.mjs http://127.0.0.1:8080 "$token" 200 \
    > "$art/live.jsonl" 2> "$art/live.err" &
follower=$!
head -c 65536 /dev/urandom > "$art/fw-1.1.0.bin"
check "firmware 1.1.0 uploaded (signed by ota)" \
    api POST '/api/v1/firmware?version=1.1.0&hardware=sim' -H 'Content-Type: application/octet-stream' \
    --data-binary @"$art/fw-1.1.0.bin" -o "$art/firmware.json"
rollout=$(api POST /api/v1/rollouts -H 'Content-Type: application/json' \
    -d '{"firmware":"1.1.0","target":{"firmware":"1.0.0"},"waves":[{"percent":10},{"percent":100}],"soakSeconds":0,"maxPerMinute":6000}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
rollout_state() { api GET "/api/v1/rollouts/$rollout" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
completed() { [ "$(rollout_state)" = completed ]; }
t0=$SECONDS
check "the rollout to the simulated devices completes ($rollout)" wait_for 240 completed
api GET "/api/v1/rollouts/$rollout" > "$art/rollout.json"
on_new() { api GET /api/v1/fleet/summary | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["firmware"].get("1.1.0",0) >= 1000 else 1)'; }
check "every device reports 1.1.0 ($((SECONDS - t0)) s after the rollout was made)" wait_for 60 on_new
sleep 3
kill $follower 2>/dev/null; wait $follower 2>/dev/null
followed() {
    python3 - "$art/live.jsonl" "$rollout" <<'PY'
import json, sys
frames = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rid = sys.argv[2]
running = any(r["id"] == rid and r["state"] == "running" for f in frames for r in f.get("rollouts") or [])
gone = any(f.get("rollouts") == [] for f in frames if "rollouts" in f)
fw = [f["firmware"].get("1.1.0", 0) for f in frames if f.get("firmware")]
print(f"{len(frames)} frames; running seen: {running}; 1.1.0 counts {fw[:3]}..{fw[-3:]}")
sys.exit(0 if running and gone and fw and fw[-1] >= 1000 and len(set(fw)) > 2 else 1)
PY
}
check "the live feed followed it: running, devices moving to 1.1.0, then no active rollout ($(followed 2>&1 | tail -1))" followed

# ---- scale: two ingest and two twin replicas, each taking work ----
metric() { # container port name: the sum of a family's samples
    podman exec "$1" curl -fs "http://127.0.0.1:$2/metrics" |
        awk -v m="$3" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
scale_line=""
for c in ingest_1 ingest_2; do
    v=$(metric ${project}_$c 9102 mh_ingest_batches_total); scale_line+="$c $v batches; "
    eval "w_$c=$v"
done
for c in twin_1 twin_2; do
    v=$(metric ${project}_$c 9103 mh_twin_device_messages_total); scale_line+="$c $v messages; "
    eval "w_$c=$v"
done
check "every replica takes work (${scale_line% })" \
    test "$w_ingest_1" -gt 0 -a "$w_ingest_2" -gt 0 -a "$w_twin_1" -gt 0 -a "$w_twin_2" -gt 0

# ---- Prometheus: every service scraped; every /metrics as promtool reads it ----
targets_up() {
    curl -fs http://127.0.0.1:9090/api/v1/targets | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
up = sorted(x["labels"]["job"] + "@" + x["labels"]["instance"] for x in t if x["health"] == "up")
print(len(up), "up:", " ".join(up))
jobs = {x.split("@")[0] for x in up}
sys.exit(0 if len(up) >= 7 and jobs >= {"gateway", "ingest", "twin", "ota", "fleet-stats"} else 1)'
}
check "Prometheus scrapes every service and replica ($(targets_up 2>&1 | tail -1 | cut -c1-160))" \
    wait_for 90 targets_up
rules_loaded() { curl -fs http://127.0.0.1:9090/api/v1/rules | grep -q MotehubCrlNearExpiry; }
check "Prometheus loaded the alert rules" rules_loaded
lint() {
    for c in gateway_1:9101 ingest_1:9102 twin_1:9103 ota_1:9104 fleet-stats_1:9105; do
        podman exec "${project}_${c%%:*}" curl -fs "http://127.0.0.1:${c##*:}/metrics" |
            promtool check metrics || { echo "${c%%:*}"; return 1; }
    done
}
check "promtool check metrics passes on every service's /metrics" lint

# ---- planes: the device network reaches the broker only ----
ip_of() { # container network
    podman inspect -f "{{(index .NetworkSettings.Networks \"${project}_$2\").IPAddress}}" "${project}_$1"
}
probe() { # network host port: 0 when a TCP connection opens
    podman run --rm --network "${project}_$1" motehub/motehub:dev \
        timeout 4 bash -c "exec 3<>/dev/tcp/$2/$3" > /dev/null 2>&1
}
pg_ip=$(ip_of postgres_1 management)
twin_ip=$(ip_of twin_1 management)
fs_ip=$(ip_of fleet-stats_1 operators)
planes() {
    local bad=""
    probe devices mosquitto 8883 || bad+="mosquitto:8883 unreachable; "
    for t in postgres:5432 "$pg_ip":5432 twin:5581 "$twin_ip":5581 ingest:5560 fleet-stats:8080 \
             "$fs_ip":8080; do
        probe devices "${t%:*}" "${t##*:}" && bad+="$t reachable; "
    done
    [ -z "$bad" ] || { echo "from the device network: $bad"; return 1; }
}
check "from a container on the device network only: the broker, and not PostgreSQL, the ZeroMQ ports or the API (by name or address)" planes
mgmt() {
    for t in postgres:5432 twin:5581 ingest:5560 fleet-stats:8080; do
        probe management "${t%:*}" "${t##*:}" || { echo "$t unreachable"; return 1; }
    done
}
check "from the management network they can be reached" mgmt

# ---- restart: a killed container comes back; down and up keep the data ----
# a crash, not `podman kill` (an operator's stop, which restart policies
# respect): SIGKILL to the process from outside
pid=$(podman inspect -f '{{.State.Pid}}' ${project}_twin_1)
started=$(podman inspect -f '{{.State.StartedAt}}' ${project}_twin_1)
kill -9 "$pid"
twin_back() {
    [ "$(podman inspect -f '{{.State.StartedAt}}' ${project}_twin_1)" != "$started" ] &&
        readyz ${project}_twin_1 9103
}
check "twin crashes (SIGKILL): its restart policy brings it back and it is ready again" \
    wait_for 120 twin_back
devices_before=$(podman exec ${project}_postgres_1 psql -U motehub -d motehub -Atc "SELECT count(*) FROM twin.devices")
rows_before=$(rows)
step "down, up"
compose down > "$art/down-keep.log" 2>&1
compose up -d --no-build > "$art/up-again.log" 2>&1
check "down then up: every service ready again" wait_for 300 all_ready
devices_after=$(podman exec ${project}_postgres_1 psql -U motehub -d motehub -Atc "SELECT count(*) FROM twin.devices")
rows_after=$(rows)
check "down then up keeps the data ($devices_before devices, $rows_before rows before; $devices_after and $rows_after after)" \
    test "$devices_after" = "$devices_before" -a "${rows_after:-0}" -ge "${rows_before:-1}"
token2=$(podman logs ${project}_secrets_1 2>/dev/null | sed -n 's/^API token: //p' | tail -1)
check "the same API token works after the restart" test "$token2" = "$token"
check "and the fleet is back online" wait_for 240 online 1000

step "done"
echo "1..$n"
[ $failed = 0 ]
