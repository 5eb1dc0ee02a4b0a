-- Blob uploads in progress to local docker repositories. The bytes received
-- so far are staged in object storage as numbered parts (`parts` is a JSON
-- list of {key, size, sha256}), so an upload survives a restart and any
-- replica can continue it.
CREATE TABLE oci_uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    image TEXT NOT NULL,
    size INTEGER NOT NULL,
    parts TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX oci_uploads_updated ON oci_uploads (updated_at);

-- Manifests that name another manifest as their `subject` (signatures,
-- SBOMs, attestations), for the referrers API.
CREATE TABLE oci_referrers (
    repo TEXT NOT NULL,
    image TEXT NOT NULL,
    subject TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    size INTEGER NOT NULL,
    annotations TEXT,
    PRIMARY KEY (repo, image, subject, digest)
);

CREATE INDEX oci_referrers_digest ON oci_referrers (repo, image, digest);
