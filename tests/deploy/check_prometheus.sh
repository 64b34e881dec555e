#!/usr/bin/env bash
# The Prometheus configuration and alert rules the compose stack ships
# (deploy/prometheus/), as promtool reads them: the config and rules are
# valid, and every alert fires on what it is for (alerts.test.yml). TAP.
set -u
dir="$(dirname "$0")/../../deploy/prometheus"
echo "1..3"
n=0
for check in "check config prometheus.yml" "check rules alerts.yml" \
             "test rules alerts.test.yml"; do
    n=$((n + 1))
    if out=$(cd "$dir" && promtool $check 2>&1); then
        echo "ok $n - promtool $check"
    else
        echo "not ok $n - promtool $check"
        printf '%s\n' "$out" | sed 's/^/# /'
    fi
done
