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
