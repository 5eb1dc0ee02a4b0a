-- What each repository holds: cached upstream objects and uploaded files.
-- Bytes live in the content-addressable store under `digest`.
CREATE TABLE objects (
    repo TEXT NOT NULL,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    -- 'remote': fetched from an upstream; 'local': uploaded.
    origin TEXT NOT NULL,
    mutable INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    -- NULL: fresh forever.
    expires_at INTEGER,
    upstream_etag TEXT,
    upstream_last_modified TEXT,
    PRIMARY KEY (repo, path)
);

CREATE INDEX objects_digest ON objects (digest);
