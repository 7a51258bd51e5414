-- Petanda store, PostgreSQL, schema version 1. Times are integer Unix seconds (UTC) unless noted.
-- The CHECK lists of kinds, categories and TLP markings mirror client/kinds.py; a test keeps them equal.

CREATE TABLE indicators (
    id           BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         TEXT     NOT NULL CHECK (kind IN ('phone', 'email', 'url', 'domain', 'ipv4', 'ipv6',
                                                   'bank_account', 'crypto_wallet', 'handle')),
    canonical    TEXT     NOT NULL CHECK (length(canonical) > 0),
    category     TEXT     NOT NULL CHECK (category IN ('investment', 'romance', 'job_task',
                          'impersonation_authority', 'impersonation_bank', 'impersonation_courier',
                          'phishing', 'ecommerce', 'loan', 'sextortion', 'money_mule', 'scam_compound',
                          'other')),
    first_seen   BIGINT   NOT NULL,
    last_seen    BIGINT   NOT NULL,
    confidence   SMALLINT NOT NULL CHECK (confidence BETWEEN 0 AND 100),
    tlp          TEXT     NOT NULL CHECK (tlp IN ('CLEAR', 'GREEN', 'AMBER', 'AMBER+STRICT', 'RED')),
    reports      INTEGER  NOT NULL CHECK (reports >= 1),
    expires_at   BIGINT,
    source       TEXT     NOT NULL,
    retracted_at BIGINT,
    updated_at   BIGINT   NOT NULL,
    CHECK (first_seen <= last_seen),
    UNIQUE (kind, canonical)
);

CREATE TABLE digests (
    indicator_id BIGINT   NOT NULL REFERENCES indicators (id) ON DELETE CASCADE,
    epoch        BIGINT   NOT NULL CHECK (epoch >= 0),
    tier         SMALLINT NOT NULL CHECK (tier IN (1, 2)),
    digest       BYTEA    NOT NULL CHECK (length(digest) IN (32, 64)),
    PRIMARY KEY (indicator_id, epoch, tier)
);
CREATE INDEX digests_by_value ON digests (epoch, tier, digest);

CREATE TABLE publications (
    version  BIGINT PRIMARY KEY CHECK (version >= 0),
    manifest BYTEA  NOT NULL
);
CREATE TABLE publication_filters (
    version BIGINT   NOT NULL REFERENCES publications (version) ON DELETE CASCADE,
    kind    TEXT     NOT NULL,
    tier    SMALLINT NOT NULL,
    data    BYTEA    NOT NULL,
    PRIMARY KEY (version, kind, tier)
);
CREATE TABLE publication_buckets (
    version   BIGINT   NOT NULL REFERENCES publications (version) ON DELETE CASCADE,
    kind      TEXT     NOT NULL,
    tier      SMALLINT NOT NULL,
    bucket_id BIGINT   NOT NULL,
    data      BYTEA    NOT NULL,
    PRIMARY KEY (version, kind, tier, bucket_id)
);

-- Token bucket + UTC-day counter per subject; float seconds.
CREATE TABLE quotas (
    subject    TEXT             PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    day        BIGINT           NOT NULL,
    daily_used BIGINT           NOT NULL CHECK (daily_used >= 0)
);

-- RFC 9162 audit log: entry i is leaf i; audit_state.size is the next index. Appenders take the row
-- lock of audit_state (UPDATE ... RETURNING), which serialises them across connections and replicas.
CREATE TABLE audit_state (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    size BIGINT   NOT NULL CHECK (size >= 0)
);
INSERT INTO audit_state (id, size) VALUES (1, 0);
CREATE TABLE audit_log (
    idx       BIGINT PRIMARY KEY CHECK (idx >= 0),
    entry     BYTEA  NOT NULL,
    leaf_hash BYTEA  NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE tree_heads (
    size      BIGINT NOT NULL CHECK (size >= 0),
    timestamp BIGINT NOT NULL,
    root      BYTEA  NOT NULL CHECK (length(root) = 32),
    signature BYTEA  NOT NULL,
    PRIMARY KEY (size, timestamp)
);

CREATE TABLE peer_manifests (
    peer_id  TEXT  PRIMARY KEY,
    manifest BYTEA NOT NULL
);
CREATE TABLE peer_filters (
    peer_id TEXT     NOT NULL REFERENCES peer_manifests (peer_id) ON DELETE CASCADE,
    kind    TEXT     NOT NULL,
    tier    SMALLINT NOT NULL,
    data    BYTEA    NOT NULL,
    PRIMARY KEY (peer_id, kind, tier)
);
CREATE TABLE peer_tree_heads (
    peer_id   TEXT   NOT NULL,
    size      BIGINT NOT NULL CHECK (size >= 0),
    timestamp BIGINT NOT NULL,
    root      BYTEA  NOT NULL CHECK (length(root) = 32),
    signature BYTEA  NOT NULL,
    PRIMARY KEY (peer_id, size, timestamp, root)
);

CREATE TABLE sightings (
    id      BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    peer_id TEXT     NOT NULL,
    kind    TEXT     NOT NULL,
    tier    SMALLINT NOT NULL CHECK (tier IN (1, 2)),
    tag     BYTEA    NOT NULL,
    at      BIGINT   NOT NULL
);
CREATE INDEX sightings_by_peer ON sightings (peer_id, id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
