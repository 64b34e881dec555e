#!/usr/bin/env bash
# Builds the validator fuzz target with clang's libFuzzer (+ ASan, UBSan) and
# runs it for a bounded time. Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-30}
out="$build/fuzz"
mkdir -p "$out/corpus"
cp -n "$here"/corpus/* "$out/corpus/" 2>/dev/null || true
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -D_GNU_SOURCE -I"$root/services/gateway" -I"$build/proto" \
    "$here/fuzz_validate.c" "$root/services/gateway/gw_validate.c" "$build/proto/telemetry.pb-c.c" \
    $(pkg-config --cflags --libs jansson libprotobuf-c) -lm -o "$out/fuzz_validate"
cd "$out"
ASAN_OPTIONS=detect_leaks=1 "$out/fuzz_validate" -max_total_time="$secs" -rss_limit_mb=2048 \
    -max_len=8192 -print_final_stats=1 corpus >fuzz.log 2>&1 || { tail -40 fuzz.log; exit 1; }
grep -E "stat::number_of_executed_units|Done" fuzz.log | tail -2
