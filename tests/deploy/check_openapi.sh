#!/usr/bin/env bash
# The operator API's OpenAPI document passes `redocly lint` (the
# recommended rules, every operation with a unique operationId) with no
# error and no warning. TAP, one test. redocly comes from the dashboard's
# devDependencies (tests/run.sh runs npm ci there).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
doc=$root/services/fleet-stats/openapi.json
bin=$root/dashboard/node_modules/.bin/redocly
echo "1..1"
if [ ! -x "$bin" ]; then
    echo "not ok 1 - redocly lint: $bin missing (npm ci in dashboard/)"
    exit 1
fi
out=$("$bin" lint --config "$root/services/fleet-stats/redocly.yaml" --format=json "$doc" 2>/dev/null)
totals=$(printf '%s' "$out" | python3 -c 'import json,sys; t=json.load(sys.stdin)["totals"]; print(t["errors"], t["warnings"])' 2>/dev/null)
if [ "$totals" = "0 0" ]; then
    echo "ok 1 - redocly lint: openapi.json has no errors and no warnings"
else
    "$bin" lint --config "$root/services/fleet-stats/redocly.yaml" "$doc" 2>&1 | sed 's/^/# /' | tail -40
    echo "not ok 1 - redocly lint: errors and warnings: ${totals:-no report}"
    exit 1
fi
