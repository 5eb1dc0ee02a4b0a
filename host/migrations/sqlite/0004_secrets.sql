-- Values every replica must share, made once by whichever process needs
-- one first (the Bearer-token signing key).
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
