-- Client certificates registered as credentials (x-auth-method: mtls): stored as
-- the SHA-256 of the certificate's DER bytes, one tenant per certificate.
CREATE TABLE client_certs (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL UNIQUE,   -- lower-case hex SHA-256 of the DER
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX client_certs_tenant ON client_certs (tenant_id);
