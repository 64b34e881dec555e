/* in_schema — see in_schema.h. */
#include "in_schema.h"

/* Idempotent; run under an advisory lock so replicas starting together do
 * not race. Partition DDL is built inside PostgreSQL with format(%I, %L),
 * so no SQL text is ever assembled from data in C. */
const char *const in_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS ingest;"
    /* the raw tier before issue 19's compact one: renamed, its rows moved
     * at the end */
    "DO $$ BEGIN"
    "  IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "             WHERE n.nspname = 'ingest' AND c.relname = 'telemetry_raw'"
    "             AND c.relkind IN ('p', 'r')) THEN"
    "    ALTER TABLE ingest.telemetry_raw RENAME TO telemetry_raw_v1;"
    "  END IF;"
    "END $$;"
    /* The raw (hot) tier: one row per device message — its timestamp,
     * dictionary ids for the device and for the message's list of metric
     * names, and the values in that order — about 40 bytes a sample with
     * three metrics a message, against 148 for a row per sample with the
     * names as text. Ids are never reused or deleted. */
    "CREATE TABLE IF NOT EXISTS ingest.device_ids ("
    "  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, device_id text NOT NULL UNIQUE);"
    "CREATE TABLE IF NOT EXISTS ingest.metric_sets ("
    "  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, metrics text[] NOT NULL UNIQUE);"
    "CREATE TABLE IF NOT EXISTS ingest.samples ("
    "  ts timestamptz NOT NULL, device int NOT NULL, metric_set int NOT NULL,"
    "  value double precision[] NOT NULL"
    ") PARTITION BY RANGE (ts);"
    "CREATE INDEX IF NOT EXISTS samples_ts ON ingest.samples USING brin (ts);"
    "CREATE INDEX IF NOT EXISTS samples_device ON ingest.samples (device, ts);"
    /* what operators, tools and tests read: a row per sample, as before
     * (unnest, not generate_subscripts: the planner guesses 10 values an
     * array, not 1,000) */
    "CREATE OR REPLACE VIEW ingest.telemetry_raw AS"
    "  SELECT d.device_id, m.metrics[u.i] AS metric, s.ts, u.v AS value"
    "  FROM ingest.samples s JOIN ingest.device_ids d ON d.id = s.device"
    "  JOIN ingest.metric_sets m ON m.id = s.metric_set"
    "  CROSS JOIN LATERAL unnest(s.value) WITH ORDINALITY AS u(v, i);"
    /* a row written to the view (by hand, by a tool) becomes a message of
     * one sample */
    "CREATE OR REPLACE FUNCTION ingest.telemetry_raw_insert() RETURNS trigger"
    "    LANGUAGE plpgsql AS $f$"
    "DECLARE dev int; ms int;"
    "BEGIN"
    "  INSERT INTO ingest.device_ids (device_id) VALUES (NEW.device_id) ON CONFLICT DO NOTHING;"
    "  SELECT id INTO dev FROM ingest.device_ids WHERE device_id = NEW.device_id;"
    "  INSERT INTO ingest.metric_sets (metrics) VALUES (ARRAY[NEW.metric]) ON CONFLICT DO NOTHING;"
    "  SELECT id INTO ms FROM ingest.metric_sets WHERE metrics = ARRAY[NEW.metric];"
    "  INSERT INTO ingest.samples VALUES (NEW.ts, dev, ms, ARRAY[NEW.value]);"
    "  RETURN NEW;"
    "END $f$;"
    "DROP TRIGGER IF EXISTS telemetry_raw_insert ON ingest.telemetry_raw;"
    "CREATE TRIGGER telemetry_raw_insert INSTEAD OF INSERT ON ingest.telemetry_raw"
    "  FOR EACH ROW EXECUTE FUNCTION ingest.telemetry_raw_insert();"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_1m ("
    "  device_id text NOT NULL, metric text NOT NULL, bucket timestamptz NOT NULL,"
    "  min double precision NOT NULL, max double precision NOT NULL,"
    "  sum double precision NOT NULL, count bigint NOT NULL,"
    "  PRIMARY KEY (device_id, metric, bucket)"
    ") PARTITION BY RANGE (bucket);"
    "CREATE INDEX IF NOT EXISTS rollup_1m_bucket ON ingest.rollup_1m USING brin (bucket);"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_1h (LIKE ingest.rollup_1m) PARTITION BY RANGE "
    "(bucket);"
    "DO $$ BEGIN"
    "  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'rollup_1h_pkey') THEN"
    "    ALTER TABLE ingest.rollup_1h ADD CONSTRAINT rollup_1h_pkey PRIMARY KEY (device_id, "
    "metric, bucket);"
    "  END IF;"
    "END $$;"
    "CREATE INDEX IF NOT EXISTS rollup_1h_bucket ON ingest.rollup_1h USING brin (bucket);"
    "CREATE TABLE IF NOT EXISTS ingest.batches ("
    "  batch_id text PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX IF NOT EXISTS batches_committed ON ingest.batches USING brin (committed_at);"
    /* Sealed raw data, one compressed block per (device, metric, hour),
     * and once its day is sealed per (device, metric, day): a block holds
     * [period_start, period_start + hours) and never leaves its UTC day
     * (in_block.h, in_compress.c); the raw tier's retention applies. Day
     * blocks and hour blocks live in partitions of their own (each by day),
     * so a day's hour blocks, once joined, leave an empty partition that is
     * truncated rather than dead rows beside the day's blocks. Blocks do
     * not compress further: no TOAST compression. The blocks table of the
     * first version (by range alone) is moved at the end. */
    "DO $$ BEGIN"
    "  IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partstrat = 'r'"
    "             AND partrelid = to_regclass('ingest.telemetry_blocks')) THEN"
    "    ALTER TABLE ingest.telemetry_blocks ADD COLUMN IF NOT EXISTS hours smallint NOT NULL"
    "      DEFAULT 1;"
    "    ALTER TABLE ingest.telemetry_blocks RENAME TO telemetry_blocks_v1;"
    "  END IF;"
    "END $$;"
    "CREATE TABLE IF NOT EXISTS ingest.telemetry_blocks ("
    "  device_id text NOT NULL, metric text NOT NULL, period_start timestamptz NOT NULL,"
    "  hours smallint NOT NULL, n int NOT NULL, data bytea NOT NULL,"
    "  PRIMARY KEY (device_id, metric, period_start, hours)"
    ") PARTITION BY LIST (hours);"
    "ALTER TABLE ingest.telemetry_blocks ALTER COLUMN data SET STORAGE EXTERNAL;"
    "CREATE TABLE IF NOT EXISTS ingest.telemetry_blocks_day PARTITION OF ingest.telemetry_blocks"
    "  FOR VALUES IN (24) PARTITION BY RANGE (period_start);"
    "CREATE TABLE IF NOT EXISTS ingest.telemetry_blocks_hour PARTITION OF ingest.telemetry_blocks"
    "  DEFAULT PARTITION BY RANGE (period_start);"
    "CREATE INDEX IF NOT EXISTS telemetry_blocks_hour_start ON ingest.telemetry_blocks_hour"
    "  (period_start);"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_dirty ("
    "  id bigserial PRIMARY KEY, tier text NOT NULL, bucket timestamptz NOT NULL);"
    "CREATE INDEX IF NOT EXISTS rollup_dirty_tier ON ingest.rollup_dirty (tier, bucket);"
    /* Creates the partitions of `parent` (each `width_days` wide, aligned to
     * the epoch) that cover [lo, hi). Returns how many it made. */
    "CREATE OR REPLACE FUNCTION ingest.ensure_partitions(parent text, width_days int,"
    "    lo timestamptz, hi timestamptz) RETURNS int LANGUAGE plpgsql SET timezone = 'UTC' AS $f$"
    "DECLARE s timestamptz; w interval := make_interval(days => width_days); n text; made int := 0;"
    "BEGIN"
    "  s := to_timestamp(floor(extract(epoch FROM lo) / 86400 / width_days) * width_days * 86400);"
    "  WHILE s < hi LOOP"
    "    n := parent || '_p' || to_char(s, 'YYYYMMDD');"
    "    IF to_regclass(format('ingest.%I', n)) IS NULL THEN"
    "      EXECUTE format('CREATE TABLE ingest.%I PARTITION OF ingest.%I FOR VALUES FROM (%L) TO "
    "(%L)',"
    "                     n, parent, s, s + w);"
    "      made := made + 1;"
    "    END IF;"
    "    s := s + w;"
    "  END LOOP;"
    "  RETURN made;"
    "END $f$;"
    /* Drops the partitions of `parent` that end at or before `cutoff`. */
    "CREATE OR REPLACE FUNCTION ingest.drop_partitions(parent text, width_days int,"
    "    cutoff timestamptz) RETURNS int LANGUAGE plpgsql SET timezone = 'UTC' AS $f$"
    "DECLARE r record; s timestamptz; dropped int := 0;"
    "BEGIN"
    "  FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    "           JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace ns ON ns.oid = "
    "p.relnamespace"
    "           WHERE ns.nspname = 'ingest' AND p.relname = parent LOOP"
    "    s := to_timestamp(substring(r.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD');"
    "    IF s IS NOT NULL AND s + make_interval(days => width_days) <= cutoff THEN"
    "      EXECUTE format('DROP TABLE ingest.%I', r.relname);"
    "      dropped := dropped + 1;"
    "    END IF;"
    "  END LOOP;"
    "  RETURN dropped;"
    "END $f$;"
    /* Truncates the partitions of `parent` (daily) that end by `sealed`
     * and hold no rows: what compression emptied gives its disk back at
     * once, index included. Under an exclusive lock, so a row written
     * meanwhile is either seen (and nothing truncated) or waits. Returns
     * how many. */
    "CREATE OR REPLACE FUNCTION ingest.truncate_emptied(parent text, sealed timestamptz)"
    "    RETURNS int LANGUAGE plpgsql SET timezone = 'UTC' AS $f$"
    "DECLARE r record; s timestamptz; empty bool; done int := 0;"
    "BEGIN"
    "  FOR r IN SELECT c.oid, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    "           JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace ns"
    "           ON ns.oid = p.relnamespace WHERE ns.nspname = 'ingest' AND p.relname = parent LOOP"
    "    s := to_timestamp(substring(r.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD');"
    /* by its heap, and its whole size: autovacuum may have cut an emptied
     * heap to nothing and left its indexes whole; a truncated partition
     * is a few pages (index metapages) */
    "    IF s IS NOT NULL AND s + interval '1 day' <= sealed AND (pg_relation_size(r.oid) > 0"
    "       OR pg_total_relation_size(r.oid) > 65536) THEN"
    "      EXECUTE format('LOCK TABLE ingest.%I IN ACCESS EXCLUSIVE MODE', r.relname);"
    "      EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM ingest.%I)', r.relname) INTO empty;"
    "      IF empty THEN"
    "        EXECUTE format('TRUNCATE ingest.%I', r.relname);"
    "        done := done + 1;"
    "      END IF;"
    "    END IF;"
    "  END LOOP;"
    "  RETURN done;"
    "END $f$;"
    /* the first version's blocks moved into the partitions by kind */
    "DO $$ DECLARE lo timestamptz; hi timestamptz; BEGIN"
    "  IF to_regclass('ingest.telemetry_blocks_v1') IS NOT NULL THEN"
    "    SELECT min(period_start), max(period_start) INTO lo, hi FROM ingest.telemetry_blocks_v1;"
    "    IF lo IS NOT NULL THEN"
    "      PERFORM ingest.ensure_partitions('telemetry_blocks_day', 1, lo, hi + interval '1 day');"
    "      PERFORM ingest.ensure_partitions('telemetry_blocks_hour', 1, lo, hi + interval '1 day');"
    "      INSERT INTO ingest.telemetry_blocks (device_id, metric, period_start, hours, n, data)"
    "        SELECT device_id, metric, period_start, hours, n, data"
    "        FROM ingest.telemetry_blocks_v1;"
    "    END IF;"
    "    DROP TABLE ingest.telemetry_blocks_v1;"
    "  END IF;"
    "END $$;"
    /* the old raw tier's rows moved into the compact one, then dropped */
    "DO $$ DECLARE lo timestamptz; hi timestamptz; BEGIN"
    "  IF to_regclass('ingest.telemetry_raw_v1') IS NOT NULL THEN"
    "    SELECT min(ts), max(ts) INTO lo, hi FROM ingest.telemetry_raw_v1;"
    "    IF lo IS NOT NULL THEN"
    "      PERFORM ingest.ensure_partitions('samples', 1, lo, hi + interval '1 day');"
    "      INSERT INTO ingest.device_ids (device_id) SELECT DISTINCT device_id"
    "        FROM ingest.telemetry_raw_v1 ON CONFLICT DO NOTHING;"
    "      INSERT INTO ingest.metric_sets (metrics) SELECT DISTINCT ARRAY[metric]"
    "        FROM ingest.telemetry_raw_v1 ON CONFLICT DO NOTHING;"
    "      INSERT INTO ingest.samples SELECT r.ts, d.id, m.id, ARRAY[r.value]"
    "        FROM ingest.telemetry_raw_v1 r JOIN ingest.device_ids d USING (device_id)"
    "        JOIN ingest.metric_sets m ON m.metrics = ARRAY[r.metric];"
    "    END IF;"
    "    DROP TABLE ingest.telemetry_raw_v1;"
    "  END IF;"
    "END $$;";
