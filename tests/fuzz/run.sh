#!/usr/bin/env bash
# Builds every libFuzzer target (tests/fuzz/meson.build) with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer, the whole tree
# instrumented, and runs each for a bounded time on a copy of its seed
# corpus (tests/fuzz/corpus/TARGET: the seeds and every input that ever
# failed, replayed first). One line per target: "fuzz TARGET: OK|FAIL …".
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]
#
# fuzz_http starts twin, ota and ingest from BUILD_DIR and needs MH_TEST_PG.
# Exits non-zero if any target failed; its log and the failing input are
# left in BUILD_DIR/fuzz-out/TARGET/.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$1
secs=${2:-30}
shift $(( $# >= 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(validate twin_doc agent ota envelope http block mqtt_client)

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$root" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link --buildtype=debugoptimized >/dev/null
fi
ninja -C "$build" >/dev/null || { echo "fuzz: the build failed"; exit 1; }
build=$(cd "$build" && pwd)

export MH_BUILD_ROOT="$build" MH_SOURCE_ROOT="$root"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
status=0
for t in "${targets[@]}"; do
    out="$build/fuzz-out/$t"
    rm -rf "$out"
    mkdir -p "$out/corpus"
    cp "$here/corpus/$t"/* "$out/corpus/"
    export MH_TEST_ARTIFACTS="$out/services"
    start=$(date +%s)
    (cd "$out" && "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=4096 \
        -max_len=16384 -timeout=30 -print_final_stats=1 corpus >fuzz.log 2>&1)
    rc=$?
    runs=$(grep -a "stat::number_of_executed_units" "$out/fuzz.log" | awk '{print $2}')
    cov=$(grep -a "DONE\|INITED" "$out/fuzz.log" | tail -1 | grep -o "cov: [0-9]*")
    if [ $rc -eq 0 ]; then
        echo "fuzz $t: OK ${runs:-0} runs in $(( $(date +%s) - start )) s, ${cov:-cov: ?}, corpus $(ls "$out/corpus" | wc -l)"
    else
        echo "fuzz $t: FAIL (exit $rc) after ${runs:-0} runs; log and input in $out"
        grep -aE "ERROR|SUMMARY|Assertion|runtime error|Test unit written" "$out/fuzz.log" | head -8
        status=1
    fi
done
exit $status
