-- Tenant-dedicated upstreams: the [[upstream_pools]] entry a silo tenant's
-- requests go to (NULL: the route's upstream).
ALTER TABLE tenants ADD COLUMN upstream_pool TEXT;

-- Autoscaling signals: each proxy's latest reading per route, replaced at every
-- metering flush (one row per node and route, so a replayed write changes nothing).
CREATE TABLE route_signals (
    node_id     TEXT NOT NULL,
    route       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    rps_milli   BIGINT NOT NULL,
    in_flight   BIGINT NOT NULL,
    p95_us      BIGINT NOT NULL,
    requests    BIGINT NOT NULL,
    PRIMARY KEY (node_id, route)
);
CREATE INDEX route_signals_route ON route_signals (route, at);

-- The policy's memory per route (replicas, last change, recent recommendations),
-- so whichever admin process evaluates next goes on from it.
CREATE TABLE scaling_state (
    route       TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Scaling decisions (append-only; pruned after [retention] scaling_events_days).
CREATE TABLE scaling_events (
    id             BIGSERIAL PRIMARY KEY,
    at             BIGINT NOT NULL,
    route          TEXT NOT NULL,
    from_replicas  BIGINT NOT NULL,
    to_replicas    BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    signals        TEXT NOT NULL
);
CREATE INDEX scaling_events_at ON scaling_events (at);
CREATE INDEX scaling_events_route ON scaling_events (route, at);
