-- Users have a lifecycle: a status (a disabled user cannot log in) and a token
-- version carried by login tokens as `tv`. Every change that must end the user's
-- sessions (disable, role or password change) bumps it; a token whose `tv`
-- differs from the row, or whose user is gone, is refused.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
