#!/usr/bin/env bash
# The test command. On a fresh Debian 12 machine it installs what is missing,
# builds, starts a private PostgreSQL cluster on a free loopback port (the
# tests start their own mosquitto brokers), runs every test, and ends with
# one line "N passed, N failed, N skipped". Exits non-zero on any failure.
#
#   tests/run.sh              the suite, then the suite again under
#                             AddressSanitizer + UndefinedBehaviorSanitizer
#   tests/run.sh --quick      the suite once, without sanitizers
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
modes=(plain sanitize)
[ "${1:-}" = "--quick" ] && modes=(plain)

tools/install-deps.sh

# The dashboard: its packages exactly as locked, its build (fleet-stats
# serves dashboard/dist; the browser test opens it).
echo "== dashboard: npm ci, build"
(cd dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent) >/dev/null
# the Kubernetes schemas the manifests are validated against
(cd tests/deploy/k8s-validate && npm ci --no-audit --no-fund --loglevel=error) >/dev/null
# the AWS IoT Device SDKs the compatibility tests run (tests/test_aws.c)
(cd tests/aws && npm ci --no-audit --no-fund --loglevel=error) >/dev/null

work=$(mktemp -d /tmp/motehub-tests.XXXXXX)
chmod 755 "$work"
pgdir="$work/pg"
cleanup() { tests/lib/pg-cluster.sh stop "$pgdir" || true; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tests/lib/pg-cluster.sh start "$pgdir" "$port"
export MH_TEST_PG="host=127.0.0.1 port=$port user=postgres"

logs=()
status=0
for mode in "${modes[@]}"; do
    build="build-test-$mode"
    opts=(--buildtype=debugoptimized)
    [ "$mode" = sanitize ] && opts+=(-Db_sanitize=address,undefined -Db_lundef=false)
    if [ ! -f "$build/build.ninja" ]; then
        meson setup "$build" "${opts[@]}" >/dev/null
    fi
    ninja -C "$build" >/dev/null
    export MH_TEST_ARTIFACTS="$root/tests/artifacts/$mode"
    rm -rf "$MH_TEST_ARTIFACTS"
    # Library-owned threads (Paho) keep a few allocations until exit; leaks
    # of our own code still fail. UBSan findings are fatal.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
    export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    echo "== $mode build: running the suite"
    if ! meson test -C "$build" --print-errorlogs --num-processes 2; then
        status=1
        python3 tests/lib/failed-output.py "$build/meson-logs/testlog.json" || true
    fi
    logs+=("$build/meson-logs/testlog.json")
done

echo "== dashboard unit tests (Vitest)"
vitest_log="$work/vitest.json"
if (cd dashboard && npx vitest run --reporter=tap-flat) >"$work/vitest.txt" 2>&1; then result=OK; else result=FAIL; fi
grep -E '^(not )?ok|^#' "$work/vitest.txt" | tail -3 || true
python3 -c 'import json,sys; print(json.dumps({"name":"vitest","result":sys.argv[1],"stdout":open(sys.argv[2]).read()}))' \
    "$result" "$work/vitest.txt" >"$vitest_log"
logs+=("$vitest_log")

# Every parser of outside input has a libFuzzer target (docs/security.md);
# each runs 20 s here on its seeds and past findings, and counts as a test.
echo "== fuzzing every parser of outside input (libFuzzer + ASan + UBSan, 20 s each)"
fuzz_targets=(validate twin_doc agent ota envelope http block mqtt_client)
tests/fuzz/run.sh build-test-fuzz 20 "${fuzz_targets[@]}" >"$work/fuzz.txt" 2>&1 || true
cat "$work/fuzz.txt"
for t in "${fuzz_targets[@]}"; do
    if grep -q "^fuzz $t: OK" "$work/fuzz.txt"; then result=OK; else result=FAIL; fi
    python3 -c 'import json,sys; print(json.dumps({"name":"fuzz-"+sys.argv[1],"result":sys.argv[2],"stdout":""}))' \
        "$t" "$result" >"$work/fuzz-$t.json"
    logs+=("$work/fuzz-$t.json")
done

echo "== SQL only through parameters"
sql_log="$work/sql.json"
if tests/lib/sql-check.sh >"$work/sql.txt" 2>&1; then result=OK; else result=FAIL; fi
cat "$work/sql.txt"
python3 -c 'import json,sys; print(json.dumps({"name":"sql-check","result":sys.argv[1],"stdout":open(sys.argv[2]).read()}))' \
    "$result" "$work/sql.txt" >"$sql_log"
logs+=("$sql_log")

echo "== formatting (clang-format)"
fmt_log="$work/format.json"
if files=$(git ls-files '*.c' '*.h') && clang-format --dry-run -Werror $files >"$work/format.txt" 2>&1; then
    echo '{"name":"clang-format","result":"OK","stdout":""}' >"$fmt_log"
else
    head -20 "$work/format.txt"
    echo '{"name":"clang-format","result":"FAIL","stdout":""}' >"$fmt_log"
fi
logs+=("$fmt_log")

# The compose stack for real: every image built from the Dockerfile,
# docker-compose.yml started with podman-compose and checked from outside
# (tests/containers/compose-test.sh; each check is one test).
echo "== the compose stack in containers (podman): images, up, checks, restart, down"
compose_log="$work/compose.json"
if tests/containers/compose-test.sh >"$work/compose.txt" 2>&1; then result=OK; else result=FAIL; fi
grep -E '^(not )?ok|^== |^# ' "$work/compose.txt" | head -80 || true
python3 -c 'import json,sys; print(json.dumps({"name":"compose-stack","result":sys.argv[1],"stdout":open(sys.argv[2]).read()}))' \
    "$result" "$work/compose.txt" >"$compose_log"
logs+=("$compose_log")

python3 tests/lib/count.py "${logs[@]}" || status=1
exit $status
