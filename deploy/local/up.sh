#!/usr/bin/env bash
# Local mode: builds Motehub and runs the whole platform on this machine,
# with no containers: mosquitto with mutual TLS on 127.0.0.1:8883 (and plain
# MQTT on 127.0.0.1:1883 for poking around), a private PostgreSQL on
# 127.0.0.1:5433 (data in .local/, git-ignored), every service, and motesim
# with 1,000 devices (registered with twin, reporting their twins, taking
# commands and OTA jobs, a few of them flapping), each device with its own
# certificate from the fleet CA ($MOTEHUB_CA_DIR, default ~/.motehub/ca,
# made on the first run). Ctrl-C stops everything it started.
#
# Overridable: MH_MQTT_PORT, MH_MQTTS_PORT, MH_PG_PORT, MOTESIM_DEVICES,
# MOTESIM_INTERVAL, MOTEHUB_CA_DIR, MH_REPLICAS (gateways, ingests and twins,
# default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
mqtt_port=${MH_MQTT_PORT:-1883}
mqtts_port=${MH_MQTTS_PORT:-8883}
export MOTEHUB_CA_DIR=${MOTEHUB_CA_DIR:-$HOME/.motehub/ca}
pg_port=${MH_PG_PORT:-5433}
devices=${MOTESIM_DEVICES:-1000}
replicas=${MH_REPLICAS:-1}
interval=${MOTESIM_INTERVAL:-5s}
state="$root/.local"
logs="$state/logs"

tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
# The dashboard, built from its locked packages; fleet-stats serves it.
(cd dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent) >/dev/null
mkdir -p "$logs"
chmod 755 "$state" "$logs"

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    # one at a time, newest first: motesim, coldstore, the services (the
    # gateway drains into ingest, ingest into Kafka), then Kafka and the broker
    for ((i=${#pids[@]}-1; i>=0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    tests/lib/pg-cluster.sh stop "$state/pg"
    echo "stopped."
    exit 0
}
trap stop INT TERM EXIT

tests/lib/pg-cluster.sh start "$state/pg" "$pg_port"
psql="psql -h 127.0.0.1 -p $pg_port -U postgres"
$psql -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'motehub'" | grep -q 1 \
    || $psql -d postgres -qc "CREATE DATABASE motehub"

# The fleet CA (outside the repository), the broker's and the gateway's
# certificates, and the broker configuration deploy/ uses, plus plain MQTT
# on loopback.
motectl=build/tools/motectl/motectl
[ -f "$MOTEHUB_CA_DIR/ca.key" ] || $motectl ca init >/dev/null
certs="$state/broker-certs"
[ -f "$certs/broker.crt" ] || $motectl ca issue --server broker --san 127.0.0.1 --san localhost \
    --out "$certs" >/dev/null
cp "$MOTEHUB_CA_DIR/crl.pem" "$MOTEHUB_CA_DIR/ca.crt" "$certs/"
root_flag=""
[ "$(id -u)" = 0 ] && root_flag="--root"
deploy/mosquitto/mosquitto-conf.sh --certs "$certs" --plugin "$root/build/services/broker-acl/motehub_acl.so" \
    --tls-port "$mqtts_port" --tls-bind 127.0.0.1 --plain-port "$mqtt_port" $root_flag \
    --pg "postgresql://postgres@127.0.0.1:$pg_port/motehub" >"$state/mosquitto.conf"
mosquitto -c "$state/mosquitto.conf" >"$logs/mosquitto.log" 2>&1 & pids+=($!)

# Kafka for the cold path: librdkafka's mock cluster (Debian has no Kafka
# broker); its stdin stays open so it keeps running.
rm -f "$state/kafka-ctl" "$state/kafka-bootstrap"
mkfifo "$state/kafka-ctl"
build/tools/kafka-mock/kafka-mock <"$state/kafka-ctl" >"$state/kafka-bootstrap" 2>"$logs/kafka-mock.log" & pids+=($!)
exec 7>"$state/kafka-ctl" # (echo down >&7 would simulate an outage)
for _ in $(seq 1 50); do [ -s "$state/kafka-bootstrap" ] && break; sleep 0.1; done
export MH_KAFKA_BROKERS=$(head -1 "$state/kafka-bootstrap")

export MH_MQTT_URL="ssl://127.0.0.1:$mqtts_port"
export MH_PG_URL="postgresql://postgres@127.0.0.1:$pg_port/motehub"
# MH_REPLICAS=N runs N of each of ingest, twin and gateway (replica k on
# the default ports + 100*k), every peer listing all of them.
list() { # list FORMAT-WITH-%d BASE-PORT
    local out="" k
    for ((k=0; k<replicas; k++)); do out+="${out:+,}$(printf "$1" $(( $2 + 100 * k )))"; done
    echo "$out"
}
export MH_INGEST_ENDPOINT=$(list tcp://127.0.0.1:%d 5560)
export MH_INGEST_RPC_ENDPOINT=$(list tcp://127.0.0.1:%d 5561)
export MH_TWIN_ENDPOINT=$(list tcp://127.0.0.1:%d 5580)
export MH_TWIN_RPC_ENDPOINT=$(list tcp://127.0.0.1:%d 5581)
export MH_TWIN_EVENTS_ENDPOINT=$(list tcp://127.0.0.1:%d 5573)
export MH_DOWNLINK_ENDPOINT=$(list tcp://127.0.0.1:%d 5590)
export MH_GATEWAY_EVENTS_ENDPOINT=$(list tcp://127.0.0.1:%d 5571)
for ((k=0; k<replicas; k++)); do
    o=$((100 * k)); sfx=""; [ "$k" -gt 0 ] && sfx="-$((k + 1))"
    build/services/ingest/motehub-ingest --bind=tcp://127.0.0.1:$((5560 + o)) \
        --rpc-bind=tcp://127.0.0.1:$((5561 + o)) --events-bind=tcp://127.0.0.1:$((5572 + o)) \
        --http-listen=127.0.0.1:$((9102 + o)) >"$logs/ingest$sfx.log" 2>&1 & pids+=($!)
    build/services/twin/motehub-twin --bind=tcp://127.0.0.1:$((5580 + o)) \
        --rpc-bind=tcp://127.0.0.1:$((5581 + o)) --events-bind=tcp://127.0.0.1:$((5573 + o)) \
        --http-listen=127.0.0.1:$((9103 + o)) --ca-dir="$MOTEHUB_CA_DIR" \
        >"$logs/twin$sfx.log" 2>&1 & pids+=($!)
done
# The fleet's firmware signing key: made once, kept in .local/ (never in git).
if [ ! -f "$state/fleet-signing.pem" ]; then
    openssl genpkey -algorithm ed25519 -out "$state/fleet-signing.pem" 2>/dev/null
    openssl pkey -in "$state/fleet-signing.pem" -pubout -out "$state/fleet-signing.pub.pem"
fi
build/services/ota/motehub-ota --signing-key="$state/fleet-signing.pem" >"$logs/ota.log" 2>&1 & pids+=($!)
for ((k=0; k<replicas; k++)); do
    o=$((100 * k)); sfx=""; [ "$k" -gt 0 ] && sfx="-$((k + 1))"
    # each replica its own certificate: the CN is its MQTT client id
    [ -f "$certs/gateway-$((k + 1)).crt" ] || $motectl ca issue --service "gateway-$((k + 1))" --out "$certs" >/dev/null
    build/services/gateway/motehub-gateway --mqtt-ca="$certs/ca.crt" \
        --mqtt-cert="$certs/gateway-$((k + 1)).crt" --mqtt-key="$certs/gateway-$((k + 1)).key" \
        --events-bind=tcp://127.0.0.1:$((5571 + o)) --downlink-bind=tcp://127.0.0.1:$((5590 + o)) \
        --http-listen=127.0.0.1:$((9101 + o)) >"$logs/gateway$sfx.log" 2>&1 & pids+=($!)
done
build/services/fleet-stats/motehub-fleet-stats --dashboard-dir="$PWD/dashboard/dist" \
    >"$logs/fleet-stats.log" 2>&1 & pids+=($!)

wait_ready() {
    for _ in $(seq 1 100); do
        curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$2 did not become ready; see $logs/$2.log" >&2
    exit 1
}
for ((k=0; k<replicas; k++)); do
    wait_ready 127.0.0.1:$((9102 + 100 * k)) ingest
    wait_ready 127.0.0.1:$((9103 + 100 * k)) twin
    wait_ready 127.0.0.1:$((9101 + 100 * k)) gateway
done
wait_ready 127.0.0.1:9104 ota
wait_ready 127.0.0.1:9105 fleet-stats
# An API token for this machine, made once and kept in .local/.
[ -s "$state/api-token" ] || build/services/fleet-stats/motehub-fleet-stats create-token local >"$state/api-token"
token=$(cat "$state/api-token")

# The cold path's far end: the topic into hourly folders of gzip files.
build/tools/coldstore/motehub-coldstore --out="$state/coldstore" >"$logs/coldstore.log" 2>&1 & pids+=($!)

# motesim registers its devices with twin first (the gateway drops messages
# from unregistered ids), issues the certificates they lack, then connects
# them over mutual TLS.
build/tools/motesim/motesim --devices="$devices" --interval="$interval" --report=30s \
    --certs="$state/device-certs" --issue-certs="$MOTEHUB_CA_DIR" --motectl="$motectl" \
    --register=tcp://127.0.0.1:5581 --flap-fraction=0.01 --flap-interval=60s \
    --ota-key="$state/fleet-signing.pub.pem" --ota-fail=9.9.9-bad:0.5 \
    >"$logs/motesim.log" 2>&1 & pids+=($!)

cat <<INFO

Motehub is running locally.
  MQTT broker      $MH_MQTT_URL   (mutual TLS; devices publish to devices/<id>/telemetry)
                   tcp://127.0.0.1:$mqtt_port   (plain, loopback only, no ACL: local mode only)
  fleet CA         $MOTEHUB_CA_DIR   (motectl ca list | issue ID | revoke ID)
  PostgreSQL       $MH_PG_URL
  Kafka (mock)     $MH_KAFKA_BROKERS   topic motehub.telemetry -> $state/coldstore/date=*/hour=*/
  replicas         $replicas of each of gateway, ingest and twin (the k-th on ports + 100*(k-1))
  gateway          http://127.0.0.1:9101/metrics  /healthz  /readyz
  ingest           http://127.0.0.1:9102/metrics  /healthz  /readyz
  twin             http://127.0.0.1:9103/metrics  /healthz  /readyz   (RPC tcp://127.0.0.1:5581)
  ota              http://127.0.0.1:9104/metrics  /healthz  /readyz   (RPC tcp://127.0.0.1:5583)
  operator API     http://127.0.0.1:8080/api/v1/   token: $token
  fleet-stats      http://127.0.0.1:9105/metrics  /healthz  /readyz

  DASHBOARD        http://127.0.0.1:8080/#token=$token
  motesim          $devices devices (sim-0000...), one message every $interval each
  logs             $logs/

Look at the stored telemetry:
  $psql motehub -c "SELECT device_id, metric, ts, value FROM ingest.telemetry_raw ORDER BY ts DESC LIMIT 10"
  $psql motehub -c "SELECT * FROM ingest.rollup_1m ORDER BY bucket DESC LIMIT 10"
Look at the cold path (every stored sample, through Kafka):
  zcat $state/coldstore/date=*/hour=*/*.jsonl.gz | tail -3
Look at the twins and the command queue:
  $psql motehub -c "SELECT id, online, firmware, version, doc->'state'->'reported' FROM twin.devices LIMIT 5"
  $psql motehub -c "SELECT device_id, name, status FROM twin.commands ORDER BY seq DESC LIMIT 10"
Use the operator API, or motectl over it:
  export MOTEHUB_TOKEN=$token
  build/tools/motectl/motectl fleet summary
  build/tools/motectl/motectl devices list --status online --limit 5
  build/tools/motectl/motectl twin set sim-0000 interval=30
  curl -s -H "Authorization: Bearer $token" 'http://127.0.0.1:8080/api/v1/devices?limit=5'
  curl -s -H "Authorization: Bearer $token" http://127.0.0.1:8080/api/v1/devices/sim-0000/twin
Roll out firmware (motesim's devices run 1.0.0; 9.9.9-bad fails on half of them):
  head -c 65536 /dev/urandom > /tmp/fw-2.0.0.bin
  build/tools/motectl/motectl firmware upload /tmp/fw-2.0.0.bin --version 2.0.0 --hardware sim
  build/tools/motectl/motectl rollout create --firmware 2.0.0 --from-firmware 1.0.0 --soak 10
  build/tools/motectl/motectl rollout list
Run a job of a JSON document (devices built on the AWS IoT SDKs take it through
the Jobs API; motesim's devices do with --aws; docs/aws-migration.md):
  build/tools/motectl/motectl job create --document '{"operation":"reboot"}' --waves 10,100
  build/tools/motectl/motectl job list
Let devices with a claim certificate provision themselves (AWS IoT fleet
provisioning: CreateKeysAndCertificate, then RegisterThing through a template):
  build/tools/motectl/motectl ca --ca-dir $MOTEHUB_CA_DIR issue --claim factory --out $state/claim
  echo '{"parameters":{"Serial":{"pattern":"[0-9A-F]{8}"}},"thingName":"sensor-{Serial}",
         "tags":{"line":"A"},"desired":{"interval":30}}' | build/tools/motectl/motectl template put factory -
  build/tools/motectl/motectl template list
Publish a sample yourself as a registered simulated device, with its certificate:
  mosquitto_pub -p $mqtts_port --cafile $certs/ca.crt --cert $state/device-certs/sim-0000.crt \\
    --key $state/device-certs/sim-0000.key -q 1 -t devices/sim-0000/telemetry -m '{"temperature":21.5}'
or on the plain loopback port:
  mosquitto_pub -p $mqtt_port -q 1 -t devices/sim-0000/telemetry -m '{"temperature":21.5}'

Press Ctrl-C to stop everything.
INFO
wait -n "${pids[@]}" || true
echo "a process exited; see $logs/" >&2
