-- The audit trail: sign-ins, tickets, impersonation, lockouts, MFA and password changes.
-- Ids are time-ordered (`evt_` + ULID), so they double as the pagination cursor.
CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    occurred_at INTEGER NOT NULL,
    tenant_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    method      TEXT,
    user_id     TEXT,
    actor_id    TEXT,
    client_ip   TEXT,
    user_agent  TEXT,
    reason      TEXT,
    details     TEXT
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
CREATE INDEX audit_events_user ON audit_events (tenant_id, user_id, id);
CREATE INDEX audit_events_type ON audit_events (tenant_id, type, id);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
