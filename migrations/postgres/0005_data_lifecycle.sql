-- Data lifecycle: hourly and daily rollups of usage_minute, the rollup
-- watermarks, and what pruning the append-only tables needs.

-- Minute rows rolled up per hour (bucket_start: the hour's start, unix seconds).
CREATE TABLE usage_hour (
    tenant_id        TEXT NOT NULL,
    bucket_start     BIGINT NOT NULL,
    requests         BIGINT NOT NULL DEFAULT 0,
    rate_limited     BIGINT NOT NULL DEFAULT 0,
    denied           BIGINT NOT NULL DEFAULT 0,
    upstream_errors  BIGINT NOT NULL DEFAULT 0,
    bytes_in         BIGINT NOT NULL DEFAULT 0,
    bytes_out        BIGINT NOT NULL DEFAULT 0,
    latency_sum_us   BIGINT NOT NULL DEFAULT 0,
    lat_b0 BIGINT NOT NULL DEFAULT 0,
    lat_b1 BIGINT NOT NULL DEFAULT 0,
    lat_b2 BIGINT NOT NULL DEFAULT 0,
    lat_b3 BIGINT NOT NULL DEFAULT 0,
    lat_b4 BIGINT NOT NULL DEFAULT 0,
    lat_b5 BIGINT NOT NULL DEFAULT 0,
    lat_b6 BIGINT NOT NULL DEFAULT 0,
    lat_b7 BIGINT NOT NULL DEFAULT 0,
    lat_b8 BIGINT NOT NULL DEFAULT 0,
    lat_b9 BIGINT NOT NULL DEFAULT 0,
    lat_b10 BIGINT NOT NULL DEFAULT 0,
    lat_b11 BIGINT NOT NULL DEFAULT 0,
    lat_b12 BIGINT NOT NULL DEFAULT 0,
    lat_b13 BIGINT NOT NULL DEFAULT 0,
    lat_b14 BIGINT NOT NULL DEFAULT 0,
    lat_b15 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, bucket_start)
);
CREATE INDEX usage_hour_bucket ON usage_hour (bucket_start);

-- Hour rows rolled up per UTC day; kept forever.
CREATE TABLE usage_day (
    tenant_id        TEXT NOT NULL,
    bucket_start     BIGINT NOT NULL,
    requests         BIGINT NOT NULL DEFAULT 0,
    rate_limited     BIGINT NOT NULL DEFAULT 0,
    denied           BIGINT NOT NULL DEFAULT 0,
    upstream_errors  BIGINT NOT NULL DEFAULT 0,
    bytes_in         BIGINT NOT NULL DEFAULT 0,
    bytes_out        BIGINT NOT NULL DEFAULT 0,
    latency_sum_us   BIGINT NOT NULL DEFAULT 0,
    lat_b0 BIGINT NOT NULL DEFAULT 0,
    lat_b1 BIGINT NOT NULL DEFAULT 0,
    lat_b2 BIGINT NOT NULL DEFAULT 0,
    lat_b3 BIGINT NOT NULL DEFAULT 0,
    lat_b4 BIGINT NOT NULL DEFAULT 0,
    lat_b5 BIGINT NOT NULL DEFAULT 0,
    lat_b6 BIGINT NOT NULL DEFAULT 0,
    lat_b7 BIGINT NOT NULL DEFAULT 0,
    lat_b8 BIGINT NOT NULL DEFAULT 0,
    lat_b9 BIGINT NOT NULL DEFAULT 0,
    lat_b10 BIGINT NOT NULL DEFAULT 0,
    lat_b11 BIGINT NOT NULL DEFAULT 0,
    lat_b12 BIGINT NOT NULL DEFAULT 0,
    lat_b13 BIGINT NOT NULL DEFAULT 0,
    lat_b14 BIGINT NOT NULL DEFAULT 0,
    lat_b15 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, bucket_start)
);
CREATE INDEX usage_day_bucket ON usage_day (bucket_start);

-- usage_minute becomes partitioned by time: one partition per UTC day
-- (`usage_minute_p<day start, unix seconds>`), created here for the days the table
-- holds (the last 14 at most) up to two days ahead, then ahead of time by the
-- lifecycle job, which drops whole days past the retention instead of deleting
-- their rows. Older rows, and a row of a day without a partition (a very late
-- flush), land in the default partition, which the retention prunes by DELETE. The
-- days are created before the default partition, so no creation has to scan it.
ALTER TABLE usage_minute RENAME TO usage_minute_unpartitioned;
ALTER TABLE usage_minute_unpartitioned RENAME CONSTRAINT usage_minute_pkey TO usage_minute_unpartitioned_pkey;
CREATE TABLE usage_minute (LIKE usage_minute_unpartitioned INCLUDING DEFAULTS)
    PARTITION BY RANGE (bucket_start);
ALTER TABLE usage_minute ADD PRIMARY KEY (tenant_id, bucket_start);
DO $$
DECLARE
    today BIGINT := (CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) / 86400) * 86400;
    d BIGINT;
BEGIN
    -- At most the last 14 days (older rows go to the default partition, past the
    -- default minute retention anyway): one transaction holds a lock per partition.
    SELECT GREATEST(COALESCE(MIN((bucket_start / 86400) * 86400), today), today - 14 * 86400) INTO d
        FROM usage_minute_unpartitioned;
    WHILE d <= today + 2 * 86400 LOOP
        EXECUTE format(
            'CREATE TABLE usage_minute_p%s PARTITION OF usage_minute FOR VALUES FROM (%s) TO (%s)',
            d, d, d + 86400);
        d := d + 86400;
    END LOOP;
END $$;
CREATE TABLE usage_minute_default PARTITION OF usage_minute DEFAULT;
INSERT INTO usage_minute SELECT * FROM usage_minute_unpartitioned;
DROP TABLE usage_minute_unpartitioned;
-- Rollups and pruning range over all tenants by time.
CREATE INDEX usage_minute_bucket ON usage_minute (bucket_start);

-- `level` (hour | day): every source bucket before `done_through` (unix seconds)
-- is in that level's rows. A flush that arrives later for such a bucket adds to
-- the rolled-up rows too, in its own transaction.
CREATE TABLE rollup_state (
    level         TEXT PRIMARY KEY,
    done_through  BIGINT NOT NULL
);

-- Pruned flush idempotency records leave each node's highest pruned sequence here:
-- a node applies its flushes in order, so a sequence at or below it was applied.
CREATE TABLE metering_nodes (
    node_id         TEXT PRIMARY KEY,
    pruned_through  BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX metering_flushes_applied ON metering_flushes (applied_at);

-- Usage per API key per hour (counters only), for `group_by=api_key`. Metering sends
-- per-key rows beside the tenant's; they are summed per hour at flush time.
CREATE TABLE usage_key_hour (
    tenant_id        TEXT NOT NULL,
    api_key_id       TEXT NOT NULL,
    bucket_start     BIGINT NOT NULL,
    requests         BIGINT NOT NULL DEFAULT 0,
    rate_limited     BIGINT NOT NULL DEFAULT 0,
    denied           BIGINT NOT NULL DEFAULT 0,
    upstream_errors  BIGINT NOT NULL DEFAULT 0,
    bytes_in         BIGINT NOT NULL DEFAULT 0,
    bytes_out        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, bucket_start, api_key_id)
);
CREATE INDEX usage_key_hour_bucket ON usage_key_hour (bucket_start);
