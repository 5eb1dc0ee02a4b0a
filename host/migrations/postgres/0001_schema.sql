-- The metadata of a fleet of replicas. The same tables as the embedded
-- SQLite database; paths sort byte-wise (COLLATE "C") so pagination and
-- prefix ranges behave the same on both.

-- What each repository holds: cached upstream objects and uploaded files.
-- Bytes live in the content-addressable store under `digest`.
CREATE TABLE objects (
    repo TEXT COLLATE "C" NOT NULL,
    path TEXT COLLATE "C" NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    -- 'remote': fetched from an upstream; 'local': uploaded.
    origin TEXT NOT NULL,
    mutable BOOLEAN NOT NULL,
    stored_at BIGINT NOT NULL,
    -- NULL: fresh forever.
    expires_at BIGINT,
    upstream_etag TEXT,
    upstream_last_modified TEXT,
    -- Times served from storage, added in batches by every replica.
    hits BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repo, path)
);

CREATE INDEX objects_digest ON objects (digest);

-- Blob uploads in progress to local docker repositories; their parts are
-- staged in object storage, so any replica can continue an upload.
CREATE TABLE oci_uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    image TEXT NOT NULL,
    size BIGINT NOT NULL,
    parts TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX oci_uploads_updated ON oci_uploads (updated_at);

-- Manifests that name another manifest as their `subject`.
CREATE TABLE oci_referrers (
    repo TEXT COLLATE "C" NOT NULL,
    image TEXT COLLATE "C" NOT NULL,
    subject TEXT NOT NULL,
    digest TEXT COLLATE "C" NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    size BIGINT NOT NULL,
    annotations TEXT,
    PRIMARY KEY (repo, image, subject, digest)
);

CREATE INDEX oci_referrers_digest ON oci_referrers (repo, image, digest);

-- Values every replica must share (the Bearer-token signing key).
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
