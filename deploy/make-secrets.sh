#!/usr/bin/env bash
# Makes what a deployment (deploy/: containers, Kubernetes) mounts, secure by
# default: the broker's and gateways' certificates from the fleet CA, and the
# CURVE keys of the internal sockets.
#
#   deploy/make-secrets.sh OUT [--broker-host NAME]... [--gateways N]
#
# OUT/broker/    ca.crt broker.crt broker.key crl.pem   -> the mosquitto container
# OUT/gateway-K/ ca.crt gateway.crt gateway.key         -> gateway replica K
#                (CN motehub:gateway-K: each replica its own client id)
# OUT/curve/     motectl curve keygen                   -> every service (MH_CURVE_DIR)
# OUT/ota/       fleet-signing.pem (+ .pub.pem)         -> ota (devices get the .pub)
#
# The CA itself stays in $MOTEHUB_CA_DIR (default ~/.motehub/ca), never in
# OUT. Run again after `motectl ca revoke` to refresh OUT/broker/crl.pem;
# existing keys and certificates are kept. motectl is taken from the build
# (build/tools/motectl/motectl) or PATH.
set -euo pipefail
out="" hosts=() gateways=2
while [ $# -gt 0 ]; do
    case "$1" in
    --broker-host) hosts+=("$2"); shift 2 ;;
    --gateways) gateways="$2"; shift 2 ;;
    -*) echo "make-secrets.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: deploy/make-secrets.sh OUT [--broker-host NAME]... [--gateways N]" >&2; exit 2; }
[ ${#hosts[@]} -gt 0 ] || hosts=(mosquitto localhost 127.0.0.1)
root="$(cd "$(dirname "$0")/.." && pwd)"
motectl="$root/build/tools/motectl/motectl"
[ -x "$motectl" ] || motectl=motectl
export MOTEHUB_CA_DIR=${MOTEHUB_CA_DIR:-$HOME/.motehub/ca}
[ -f "$MOTEHUB_CA_DIR/ca.key" ] || "$motectl" ca init
mkdir -p "$out"
if [ ! -f "$out/broker/broker.crt" ]; then
    sans=()
    for h in "${hosts[@]}"; do sans+=(--san "$h"); done
    "$motectl" ca issue --server broker "${sans[@]}" --out "$out/broker"
fi
cp "$MOTEHUB_CA_DIR/crl.pem" "$out/broker/crl.pem"
for k in $(seq 1 "$gateways"); do
    d="$out/gateway-$k"
    [ -f "$d/gateway-$k.crt" ] || "$motectl" ca issue --service "gateway-$k" --out "$d"
    # the names deploy/motehub.env gives, whichever replica mounts the folder
    cp "$d/gateway-$k.crt" "$d/gateway.crt"
    cp -p "$d/gateway-$k.key" "$d/gateway.key"
done
"$motectl" curve keygen --out "$out/curve"
mkdir -p "$out/ota"
if [ ! -f "$out/ota/fleet-signing.pem" ]; then
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$out/ota/fleet-signing.pem")
    openssl pkey -in "$out/ota/fleet-signing.pem" -pubout -out "$out/ota/fleet-signing.pub.pem"
fi
echo "secrets in $out (the CA stays in $MOTEHUB_CA_DIR); the services read deploy/motehub.env"
