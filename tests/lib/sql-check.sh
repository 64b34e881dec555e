#!/usr/bin/env bash
# "All SQL through parameters": fails if any C source of the platform
# (services, libcommon, agent, tools; not the tests' own checks) builds SQL text with a
# printf-style directive or string concatenation at run time. SQL lives in
# string literals with $n parameters (and PostgreSQL's own format(%I, %L)
# inside PL/pgSQL, which is not C formatting). Prints one TAP line.
cd "$(dirname "$0")/../.."
hits=$(git ls-files 'services/*.c' 'libcommon/*.c' 'agent/*.c' 'tools/*.c' | xargs grep -nE \
    '"[^"]*\b(SELECT|INSERT INTO|UPDATE [a-z_.]+ SET|DELETE FROM|CREATE TABLE|ALTER TABLE|DROP TABLE|EXECUTE [a-z_]+|COPY [a-z_.]+)\b[^"]*%[-0-9.]*(s|d|u|ld|lld|zu|"PRI)' \
    | grep -v "format('" || true)
hits2=$(git ls-files 'services/*.c' 'libcommon/*.c' 'agent/*.c' 'tools/*.c' | xargs grep -nE '(strcat|strncat)\([^)]*(sql|query)' || true)
if [ -n "$hits$hits2" ]; then
    echo "not ok 1 - SQL built from strings at run time:"
    printf '%s\n%s\n' "$hits" "$hits2" | sed '/^$/d; s/^/# /'
    exit 1
fi
echo "ok 1 - every SQL statement is a literal with parameters ($(git ls-files 'services/*.c' 'libcommon/*.c' 'agent/*.c' 'tools/*.c' | xargs grep -lE 'mh_pg_exec|PQexecParams|mh_pg_ok' | wc -l) files with SQL checked)"
