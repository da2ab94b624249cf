-- TOTP factors (secret sealed with the data key) and one-time backup codes (keyed hashes).
CREATE TABLE mfa_totp (
    user_id        TEXT PRIMARY KEY REFERENCES users (id),
    secret_sealed  TEXT NOT NULL,
    confirmed_at   BIGINT,
    last_used_step BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE backup_codes (
    user_id    TEXT NOT NULL REFERENCES users (id),
    code_hash  TEXT NOT NULL,
    used_at    BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
