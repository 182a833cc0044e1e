-- Issuers bound to a tenant (a tenant's own IdP): their tokens authenticate for
-- that tenant only. An issuer URL is bound to at most one tenant.
CREATE TABLE tenant_issuers (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    issuer                TEXT NOT NULL UNIQUE,
    jwks_url              TEXT NOT NULL,
    audiences             TEXT NOT NULL,   -- JSON array of strings
    algorithms            TEXT NOT NULL,   -- JSON array of strings
    tenant_claim          TEXT NOT NULL,
    role_claim            TEXT NOT NULL,
    default_role          TEXT,
    max_lifetime_seconds  BIGINT,
    created_at            BIGINT NOT NULL
);
CREATE INDEX tenant_issuers_tenant ON tenant_issuers (tenant_id);
