-- Previous password hashes (newest = highest seq), for the history rule.
CREATE TABLE password_history (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT NOT NULL REFERENCES users (id),
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE INDEX password_history_user ON password_history (user_id, seq);
