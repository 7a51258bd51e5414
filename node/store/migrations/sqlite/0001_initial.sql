-- Petanda store, SQLite, schema version 1. Times are integer Unix seconds (UTC) unless noted.
-- Value lists are OR chains, not IN lists: SQLite builds an ephemeral table for an IN list on every
-- row checked (4x slower ingest). The lists of kinds, categories and TLP markings mirror
-- client/kinds.py; a test keeps them equal.

CREATE TABLE indicators (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind = 'phone' OR kind = 'email' OR kind = 'url' OR kind = 'domain' OR
                                     kind = 'ipv4' OR kind = 'ipv6' OR kind = 'bank_account' OR
                                     kind = 'crypto_wallet' OR kind = 'handle'),
    canonical    TEXT    NOT NULL CHECK (length(canonical) > 0),
    category     TEXT    NOT NULL CHECK (category = 'investment' OR category = 'romance' OR category = 'job_task' OR
                                     category = 'impersonation_authority' OR category = 'impersonation_bank' OR
                                     category = 'impersonation_courier' OR category = 'phishing' OR
                                     category = 'ecommerce' OR category = 'loan' OR category = 'sextortion' OR
                                     category = 'money_mule' OR category = 'scam_compound' OR category = 'other'),
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    confidence   INTEGER NOT NULL CHECK (confidence BETWEEN 0 AND 100),
    tlp          TEXT    NOT NULL CHECK (tlp = 'CLEAR' OR tlp = 'GREEN' OR tlp = 'AMBER' OR tlp = 'AMBER+STRICT' OR
                                     tlp = 'RED'),
    reports      INTEGER NOT NULL CHECK (reports >= 1),
    expires_at   INTEGER,
    source       TEXT    NOT NULL,
    retracted_at INTEGER,
    updated_at   INTEGER NOT NULL,
    CHECK (first_seen <= last_seen),
    UNIQUE (kind, canonical)
);

CREATE TABLE digests (
    indicator_id INTEGER NOT NULL REFERENCES indicators (id) ON DELETE CASCADE,
    epoch        INTEGER NOT NULL CHECK (epoch >= 0),
    tier         INTEGER NOT NULL CHECK (tier = 1 OR tier = 2),
    digest       BLOB    NOT NULL CHECK (typeof(digest) = 'blob' AND (length(digest) = 32 OR length(digest) = 64)),
    PRIMARY KEY (indicator_id, epoch, tier)
) WITHOUT ROWID;
CREATE INDEX digests_by_value ON digests (epoch, tier, digest);

CREATE TABLE publications (
    version  INTEGER PRIMARY KEY CHECK (version >= 0),
    manifest BLOB NOT NULL
);
CREATE TABLE publication_filters (
    version INTEGER NOT NULL REFERENCES publications (version) ON DELETE CASCADE,
    kind    TEXT    NOT NULL,
    tier    INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (version, kind, tier)
) WITHOUT ROWID;
CREATE TABLE publication_buckets (
    version   INTEGER NOT NULL REFERENCES publications (version) ON DELETE CASCADE,
    kind      TEXT    NOT NULL,
    tier      INTEGER NOT NULL,
    bucket_id INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (version, kind, tier, bucket_id)
) WITHOUT ROWID;

-- Token bucket + UTC-day counter per subject; float seconds.
CREATE TABLE quotas (
    subject    TEXT    PRIMARY KEY,
    tokens     REAL    NOT NULL,
    updated_at REAL    NOT NULL,
    day        INTEGER NOT NULL,
    daily_used INTEGER NOT NULL CHECK (daily_used >= 0)
) WITHOUT ROWID;

-- RFC 9162 audit log: entry i is leaf i; audit_state.size is the next index (the serialisation point).
CREATE TABLE audit_state (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL CHECK (size >= 0)
);
INSERT INTO audit_state (id, size) VALUES (1, 0);
CREATE TABLE audit_log (
    idx       INTEGER PRIMARY KEY CHECK (idx >= 0),
    entry     BLOB    NOT NULL,
    leaf_hash BLOB    NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

CREATE TABLE tree_heads (
    size      INTEGER NOT NULL CHECK (size >= 0),
    timestamp INTEGER NOT NULL,
    root      BLOB    NOT NULL CHECK (length(root) = 32),
    signature BLOB    NOT NULL,
    PRIMARY KEY (size, timestamp)
) WITHOUT ROWID;

CREATE TABLE peer_manifests (
    peer_id  TEXT PRIMARY KEY,
    manifest BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE peer_filters (
    peer_id TEXT    NOT NULL REFERENCES peer_manifests (peer_id) ON DELETE CASCADE,
    kind    TEXT    NOT NULL,
    tier    INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (peer_id, kind, tier)
) WITHOUT ROWID;
CREATE TABLE peer_tree_heads (
    peer_id   TEXT    NOT NULL,
    size      INTEGER NOT NULL CHECK (size >= 0),
    timestamp INTEGER NOT NULL,
    root      BLOB    NOT NULL CHECK (length(root) = 32),
    signature BLOB    NOT NULL,
    PRIMARY KEY (peer_id, size, timestamp, root)
) WITHOUT ROWID;

CREATE TABLE sightings (
    id      INTEGER PRIMARY KEY,
    peer_id TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    tier    INTEGER NOT NULL CHECK (tier = 1 OR tier = 2),
    tag     BLOB    NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX sightings_by_peer ON sightings (peer_id, id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
