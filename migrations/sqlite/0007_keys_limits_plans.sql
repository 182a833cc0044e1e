-- Keys, limits, quotas, plans: a key's own rate limit, scopes and IP allow-list; a
-- tenant's allow-list; plans as data (tiers name them); quotas per UTC day or month
-- and what was spent of them.

ALTER TABLE api_keys ADD COLUMN rl_max_requests BIGINT;
ALTER TABLE api_keys ADD COLUMN rl_window_seconds BIGINT;
ALTER TABLE api_keys ADD COLUMN rl_burst BIGINT;
-- JSON arrays; NULL = no restriction.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN allowed_cidrs TEXT;
ALTER TABLE tenants ADD COLUMN allowed_cidrs TEXT;

CREATE TABLE plans (
    name                TEXT PRIMARY KEY,
    max_requests        BIGINT NOT NULL,
    window_seconds      BIGINT NOT NULL,
    burst               BIGINT,
    quota_period        TEXT,
    quota_max_requests  BIGINT,
    updated_at          BIGINT NOT NULL
);
INSERT INTO plans (name, max_requests, window_seconds, burst, quota_period, quota_max_requests, updated_at) VALUES
    ('free', 60, 60, NULL, NULL, NULL, 0),
    ('pro', 1000, 60, NULL, NULL, NULL, 0),
    ('enterprise', 10000, 60, NULL, NULL, NULL, 0);

-- Tenants onboarded before plans got a copy of their tier's limit: they follow
-- their plan again (same limit, now changed with the plan).
DELETE FROM rate_limit_configs WHERE burst IS NULL AND window_seconds = 60 AND EXISTS (
    SELECT 1 FROM tenants t WHERE t.id = rate_limit_configs.tenant_id AND (
        (t.tier = 'free' AND rate_limit_configs.max_requests = 60)
        OR (t.tier = 'pro' AND rate_limit_configs.max_requests = 1000)
        OR (t.tier = 'enterprise' AND rate_limit_configs.max_requests = 10000)));

CREATE TABLE tenant_quotas (
    tenant_id     TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    period        TEXT NOT NULL,
    max_requests  BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Requests admitted against a tenant's quota per period (start: unix ms, UTC).
CREATE TABLE quota_usage (
    tenant_id     TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    used          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, period_start)
);
