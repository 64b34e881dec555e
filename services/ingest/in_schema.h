/* in_schema — ingest's tables and functions in PostgreSQL (in_store.h
 * lists them), and the migration from the raw tier of a row per sample to
 * the compact one (issue 19): idempotent, run by mh_pg under an advisory
 * lock whenever ingest connects, so replicas starting together do not
 * race. */
#pragma once

extern const char *const in_schema_sql;
