#!/usr/bin/env python3
"""Counts every test case meson ran, from its JSON test log: each TAP line
('ok' / 'not ok') is one test; a program that printed no TAP line counts as
one test by its exit status. Prints 'N passed, N failed, N skipped'."""
import json, re, sys

passed = failed = skipped = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            t = json.loads(line)
            out = t.get("stdout") or ""
            tap = [l for l in out.splitlines() if re.match(r"^(not )?ok\b", l)]
            if not tap:
                if t["result"] == "SKIP":
                    skipped += 1
                elif t["result"] in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                else:
                    failed += 1
                continue
            for l in tap:
                if re.search(r"#\s*SKIP", l, re.I):
                    skipped += 1
                elif l.startswith("not ok"):
                    failed += 1
                else:
                    passed += 1
            # A crash after some TAP lines still fails the program.
            if t["result"] not in ("OK", "SKIP", "EXPECTEDFAIL") and not any(l.startswith("not ok") for l in tap):
                failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
