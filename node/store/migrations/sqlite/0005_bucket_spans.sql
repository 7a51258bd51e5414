-- Petanda store, SQLite, schema version 5.
-- A publication's buckets are stored once per change, not once per version: a bucket span holds the
-- bytes of one bucket from the version that wrote them (first_version) up to the version that replaced
-- or dropped them (until_version, exclusive; NULL while current). A publication writes only the buckets
-- that changed and carries the others; a version's bucket is the span that covers it. A span whose
-- until_version equals its first_version is staged: written by a publication not yet saved, valid at no
-- version. The bytes live in bucket_data, keyed like their span, so closing a span rewrites a small row.
CREATE TABLE bucket_spans (
    kind          TEXT    NOT NULL,
    tier          INTEGER NOT NULL,
    bucket_id     INTEGER NOT NULL,
    first_version INTEGER NOT NULL,  -- a publication's version (not yet saved while staged)
    until_version INTEGER CHECK (until_version IS NULL OR until_version >= first_version),
    sha256        BLOB,  -- SHA-256 of the bytes; NULL when not known (spans migrated from schema 4)
    PRIMARY KEY (kind, tier, bucket_id, first_version)
) WITHOUT ROWID;
CREATE INDEX bucket_spans_until ON bucket_spans (until_version);
CREATE TABLE bucket_data (
    kind      TEXT    NOT NULL,
    tier      INTEGER NOT NULL,
    bucket_id INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (kind, tier, bucket_id, version)
);
INSERT INTO bucket_data (kind, tier, bucket_id, version, data)
    SELECT kind, tier, bucket_id, version, data FROM publication_buckets;
INSERT INTO bucket_spans (kind, tier, bucket_id, first_version, until_version, sha256)
    SELECT kind, tier, bucket_id, version,
           CASE WHEN version = (SELECT max(version) FROM publications WHERE NOT pruned)
                THEN NULL ELSE version + 1 END,
           NULL
    FROM publication_buckets;
DROP TABLE publication_buckets;
