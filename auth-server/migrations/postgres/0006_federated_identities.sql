-- Accounts of external OpenID Connect providers linked to local users: one (issuer, subject)
-- per tenant names one user.
CREATE TABLE federated_identities (
    tenant_id  TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, issuer, subject)
);
CREATE INDEX federated_identities_user ON federated_identities (user_id);
