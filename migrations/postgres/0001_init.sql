-- tenantgate control plane: tenants, users, API keys, RBAC policies, rate limits,
-- signing keys, per-minute usage rollups, and the change feed proxies follow.
-- Times are unix milliseconds (BIGINT) so both backends share one set of queries.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    prefix      TEXT NOT NULL UNIQUE,
    digest      TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE rbac_policies (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, role)
);

CREATE TABLE rate_limit_configs (
    tenant_id       TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    max_requests    BIGINT NOT NULL,
    window_seconds  BIGINT NOT NULL,
    burst           BIGINT,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    algorithm     TEXT NOT NULL,
    public_jwk    TEXT NOT NULL,
    private_sealed TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    retired_at    BIGINT
);

-- One row per tenant per minute; flushes add to it.
CREATE TABLE usage_minute (
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

-- (node, sequence) of every applied metering flush: a retried flush is a no-op.
CREATE TABLE metering_flushes (
    node_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    applied_at  BIGINT NOT NULL,
    PRIMARY KEY (node_id, seq)
);

-- Append-only feed of control-plane changes; proxies invalidate caches from it.
CREATE TABLE changes (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX changes_created ON changes (created_at);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
