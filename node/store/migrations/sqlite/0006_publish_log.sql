-- Petanda store, SQLite, schema version 6.
-- The change log a publication reads instead of every row (ADR 0021). Triggers write it in the
-- transaction of every change, whatever the path (ingest, feeds, retraction, TLP, digests recomputed,
-- purge): an entry names an indicator whose row or digests changed (indicator_id), or a digest that left
-- its row after it had been sealed (kind, epoch, tier, digest: deleted, or replaced by another value), so
-- that a publication can take its record out. A publication reads the entries up to a sequence number
-- and deletes them when it is saved. Expiry changes no row: a publication finds the rows whose expiry
-- passed since the last one by the expiry index.
CREATE TABLE publish_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a mark stays below later changes
    indicator_id INTEGER,
    kind         TEXT,
    epoch        INTEGER,
    tier         INTEGER,
    digest       BLOB
);
CREATE INDEX indicators_by_expiry ON indicators (expires_at) WHERE expires_at IS NOT NULL;
-- The AMBER+STRICT and RED indicators a publication withholds, counted without reading every row.
CREATE INDEX indicators_strict ON indicators (kind) WHERE tlp = 'AMBER+STRICT';
CREATE INDEX indicators_red ON indicators (kind) WHERE tlp = 'RED';

CREATE TRIGGER publish_log_indicator AFTER UPDATE ON indicators
BEGIN
    INSERT INTO publish_log (indicator_id) VALUES (NEW.id);
END;
CREATE TRIGGER publish_log_indicator_gone BEFORE DELETE ON indicators
BEGIN
    INSERT INTO publish_log (kind, epoch, tier, digest)
        SELECT OLD.kind, epoch, tier, digest FROM digests WHERE indicator_id = OLD.id AND sealed IS NOT NULL;
END;
CREATE TRIGGER publish_log_digest_new AFTER INSERT ON digests
BEGIN
    INSERT INTO publish_log (indicator_id) VALUES (NEW.indicator_id);
END;
CREATE TRIGGER publish_log_digest_replaced AFTER UPDATE OF digest ON digests WHEN OLD.digest <> NEW.digest
BEGIN
    INSERT INTO publish_log (indicator_id) VALUES (NEW.indicator_id);
    INSERT INTO publish_log (kind, epoch, tier, digest)
        SELECT kind, OLD.epoch, OLD.tier, OLD.digest FROM indicators
        WHERE id = OLD.indicator_id AND OLD.sealed IS NOT NULL;
END;
CREATE TRIGGER publish_log_digest_gone AFTER DELETE ON digests WHEN OLD.sealed IS NOT NULL
BEGIN
    INSERT INTO publish_log (kind, epoch, tier, digest)
        SELECT kind, OLD.epoch, OLD.tier, OLD.digest FROM indicators WHERE id = OLD.indicator_id;
END;
