-- Tenants, users, sessions and refresh tokens. Timestamps are Unix seconds; flags are 0/1.
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    display_name TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

INSERT INTO tenants (id, name, display_name, created_at)
VALUES ('default', 'default', 'Default', CAST(strftime('%s', 'now') AS INTEGER));

CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    username             TEXT NOT NULL,
    email                TEXT,
    phone                TEXT,
    password_hash        TEXT,
    status               TEXT NOT NULL DEFAULT 'active',
    roles                TEXT NOT NULL DEFAULT '',
    must_change_password INTEGER NOT NULL DEFAULT 0,
    password_changed_at  INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE UNIQUE INDEX users_tenant_username ON users (tenant_id, username);
CREATE UNIQUE INDEX users_tenant_email ON users (tenant_id, email);
CREATE UNIQUE INDEX users_tenant_phone ON users (tenant_id, phone);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    user_id        TEXT NOT NULL REFERENCES users (id),
    amr            TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);

CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    rotated_at INTEGER
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
