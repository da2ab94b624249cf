-- What the server remembers per user for risk scoring (bounded JSON: devices, networks, hours).
CREATE TABLE risk_profiles (
    user_id    TEXT PRIMARY KEY REFERENCES users (id),
    profile    TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
