#!/usr/bin/env bash
# Installs the Debian 12 packages Motehub builds, tests and runs with, if any
# is missing. Used by deploy/local/up.sh and tests/run.sh.
set -euo pipefail
pkgs=(build-essential pkg-config meson ninja-build clang-format clang libclang-rt-14-dev
      libzmq3-dev libczmq-dev libpaho-mqtt-dev librdkafka-dev libpq-dev libprotobuf-c-dev
      protobuf-c-compiler libssl-dev libjansson-dev libmicrohttpd-dev libcmocka-dev
      libcurl4-openssl-dev libcivetweb-dev zlib1g-dev postgresql-15 mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev docker-compose python3-yaml python3 curl
      nodejs chromium prometheus)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
