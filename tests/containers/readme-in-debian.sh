#!/usr/bin/env bash
# The README's two commands on a stock Debian 12 — the debootstrap image
# (tests/containers/images.sh), nothing else installed — in a container:
#   1. deploy/local/up.sh: installs what it needs, builds, starts the whole
#      platform with 1,000 simulated devices; checked through the API it
#      prints, then stopped (SIGTERM, which up.sh takes as Ctrl-C);
#   2. tests/run.sh --quick: installs, builds and runs the suite once.
# Slow (the first install downloads a few hundred MB and everything is
# compiled twice): not part of the test command; docs/deploy.md has its last
# result. Prints TAP.
#   tests/containers/readme-in-debian.sh [REV]      (default HEAD)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. tests/containers/lib.sh
rev=${1:-HEAD}
art=${MH_TEST_ARTIFACTS:-$root/tests/artifacts}/readme-in-debian
mkdir -p "$art"
podman image exists docker.io/library/debian:12-slim || tests/containers/images.sh --base-only

# a fresh clone, as a newcomer has it
src="$MH_CONTAINERS_DIR/readme-src"
rm -rf "$src" && git clone -q "$root" "$src" && git -C "$src" checkout -q "$rev"

# the host's network (apt's mirror and npm's registry as the host reaches
# them; what up.sh serves on its 127.0.0.1 ports); npm trusts this machine's
# CA list (mounted, never copied)
run() {
    podman run --rm --name mh-readme --network host -v "$src:/src" -w /src \
        -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
        -e NPM_CONFIG_CAFILE=/run/host-ca.crt -e NODE_EXTRA_CA_CERTS=/run/host-ca.crt \
        docker.io/library/debian:12-slim bash -c "$1"
}

step "command 1: deploy/local/up.sh in a stock Debian 12 container"
run '
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends git ca-certificates >/dev/null
  git config --global --add safe.directory /src
  deploy/local/up.sh > /tmp/up.log 2>&1 &
  up=$!
  for i in $(seq 1 900); do
      if grep -q "#token=" /tmp/up.log 2>/dev/null; then break; fi
      kill -0 $up 2>/dev/null || break
      sleep 1
  done
  cat /tmp/up.log | grep -E "^(==|installing|Setting up)" | tail -5
  token=$(cat .local/api-token 2>/dev/null)
  ok=1
  for i in $(seq 1 120); do
      n=$(curl -fs -H "Authorization: Bearer $token" http://127.0.0.1:8080/api/v1/fleet/summary |
          python3 -c "import json,sys; print(json.load(sys.stdin)[\"devices\"][\"online\"])" 2>/dev/null)
      [ "${n:-0}" -ge 1000 ] && { ok=0; break; }
      sleep 2
  done
  echo "devices online: ${n:-none}"
  tail -20 /tmp/up.log > /src/.readme-up-tail.log
  kill -TERM $up; wait $up  # (a background job ignores SIGINT)
  exit $ok
' > "$art/command-1.log" 2>&1
rc1=$?
[ $rc1 = 0 ] && echo "ok 1 - deploy/local/up.sh on stock Debian 12: installs, builds, runs; 1,000 devices online ($SECONDS s)" ||
    { echo "not ok 1 - deploy/local/up.sh on stock Debian 12"; tail -15 "$art/command-1.log" | sed 's/^/# /'; }

step "command 2: tests/run.sh --quick in a stock Debian 12 container"
run '
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends git ca-certificates >/dev/null
  git config --global --add safe.directory /src
  tests/run.sh --quick
' > "$art/command-2.log" 2>&1
rc2=$?
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$art/command-2.log" | tail -1)
[ $rc2 = 0 ] && echo "ok 2 - tests/run.sh --quick on stock Debian 12: $summary ($SECONDS s)" ||
    { echo "not ok 2 - tests/run.sh --quick on stock Debian 12: ${summary:-no summary}"; grep -E '^not ok|FAIL' "$art/command-2.log" | head -20 | sed 's/^/# /'; }
echo "1..2"
[ $rc1 = 0 ] && [ $rc2 = 0 ]
