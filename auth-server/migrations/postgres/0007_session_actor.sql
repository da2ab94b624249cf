-- The actor chain of an impersonated session (JSON, RFC 8693 `act`), kept for every access
-- token of the session; and the expiry of the access token issued with each refresh token, so
-- that a revocation is denied for as long as the session's longest-lived token.
ALTER TABLE sessions ADD COLUMN actor TEXT;
ALTER TABLE refresh_tokens ADD COLUMN access_expires_at BIGINT;
