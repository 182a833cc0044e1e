-- Tenant domains: a request whose Host is one of them belongs to that tenant (a
-- credential of another tenant there is refused). A domain belongs to one tenant.
CREATE TABLE tenant_domains (
    domain      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX tenant_domains_tenant ON tenant_domains (tenant_id);
