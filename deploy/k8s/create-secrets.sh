#!/usr/bin/env bash
# Turns deploy/make-secrets.sh's output into the Secrets the manifests mount.
#   deploy/k8s/create-secrets.sh OUT [PG_URL]
set -euo pipefail
out=$1
pg=${2:-postgresql://motehub:motehub@postgres.motehub.svc:5432/motehub}
k="kubectl -n motehub"
# (a Secret holds no folders: the allow-list is its own, mounted at curve/clients)
$k create secret generic motehub-curve --from-file="$out/curve" --dry-run=client -o yaml | $k apply -f -
$k create secret generic motehub-curve-clients --from-file="$out/curve/clients" --dry-run=client -o yaml \
    | $k apply -f -
$k create secret generic motehub-broker --from-file="$out/broker" --dry-run=client -o yaml | $k apply -f -
args=()
for d in "$out"/gateway-*; do
    n=${d##*/gateway-}
    args+=(--from-file="gateway-$n.crt=$d/gateway.crt" --from-file="gateway-$n.key=$d/gateway.key")
done
$k create secret generic motehub-gateway-certs --from-file=ca.crt="$out/broker/ca.crt" "${args[@]}" \
    --dry-run=client -o yaml | $k apply -f -
$k create secret generic motehub-ota --from-file="$out/ota" --dry-run=client -o yaml | $k apply -f -
$k create secret generic motehub-pg --from-literal=url="$pg" --dry-run=client -o yaml | $k apply -f -
