-- Tenant-assertion signing keys, shared by every proxy of a fleet. The private key
-- is sealed with the server secret, like the login keys. A key is published (in the
-- JWKS) from its creation and used for signing from `active_from` on.
CREATE TABLE assertion_keys (
    kid             TEXT PRIMARY KEY,
    algorithm       TEXT NOT NULL,
    public_jwk      TEXT NOT NULL,
    private_sealed  TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    active_from     BIGINT NOT NULL,
    retired_at      BIGINT
);
