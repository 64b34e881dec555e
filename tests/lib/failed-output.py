#!/usr/bin/env python3
"""Prints what each failed test of a meson run wrote to stdout — its TAP lines
and cmocka's reasons ("not ok", the failed assertion and its line) — which
`meson test --print-errorlogs` does not show for a TAP test: it shows stderr
only. Usage: failed-output.py build/meson-logs/testlog.json [LINES]"""
import json
import sys

path = sys.argv[1]
keep = int(sys.argv[2]) if len(sys.argv) > 2 else 40
with open(path) as f:
    for line in f:
        t = json.loads(line)
        if t.get("result") in ("OK", "SKIP", "EXPECTEDFAIL"):
            continue
        out = (t.get("stdout") or "").splitlines()
        print(f"-- {t['name']}: {t['result']}; the last {min(keep, len(out))} lines of its output:")
        for l in out[-keep:]:
            print(f"   {l}")
