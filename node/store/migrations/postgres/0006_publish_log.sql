-- Petanda store, PostgreSQL, schema version 6.
-- The change log a publication reads instead of every row (ADR 0021). Triggers write it in the
-- transaction of every change, whatever the path (ingest, feeds, retraction, TLP, digests recomputed,
-- purge): an entry names an indicator whose row or digests changed (indicator_id), or a digest that left
-- its row after it had been sealed (kind, epoch, tier, digest: deleted, or replaced by another value), so
-- that a publication can take its record out. A publication reads the entries up to a sequence number
-- (taken under a SHARE lock, so no writer in flight holds a smaller one) and deletes them when it is
-- saved. Expiry changes no row: a publication finds the rows whose expiry passed since the last one by
-- the expiry index.
CREATE TABLE publish_log (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    indicator_id BIGINT,
    kind         TEXT,
    epoch        BIGINT,
    tier         SMALLINT,
    digest       BYTEA
);
CREATE INDEX indicators_by_expiry ON indicators (expires_at) WHERE expires_at IS NOT NULL;
-- The AMBER+STRICT and RED indicators a publication withholds, counted without reading every row.
CREATE INDEX indicators_strict ON indicators (kind) WHERE tlp = 'AMBER+STRICT';
CREATE INDEX indicators_red ON indicators (kind) WHERE tlp = 'RED';

-- Updates and inserts, the hot path of ingest, are logged once per statement from its transition tables
-- (a row trigger in PL/pgSQL cost ~10 us a row); deletions (a purge, old epochs) row by row, since the
-- digests of a deleted indicator must be read before the cascade removes them.
CREATE FUNCTION publish_log_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO publish_log (indicator_id) SELECT id FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER publish_log_indicator AFTER UPDATE ON indicators
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION publish_log_updated();

CREATE FUNCTION publish_log_indicator_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO publish_log (kind, epoch, tier, digest)
        SELECT OLD.kind, d.epoch, d.tier, d.digest FROM digests d
        WHERE d.indicator_id = OLD.id AND d.sealed IS NOT NULL;
    RETURN OLD;
END $$;
CREATE TRIGGER publish_log_indicator_gone BEFORE DELETE ON indicators
    FOR EACH ROW EXECUTE FUNCTION publish_log_indicator_gone();

CREATE FUNCTION publish_log_digest_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO publish_log (indicator_id) SELECT indicator_id FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER publish_log_digest_new AFTER INSERT ON digests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION publish_log_digest_new();

CREATE FUNCTION publish_log_digest_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO publish_log (indicator_id)
        SELECT n.indicator_id FROM new_rows n JOIN old_rows o USING (indicator_id, epoch, tier)
        WHERE o.digest <> n.digest;
    INSERT INTO publish_log (kind, epoch, tier, digest)
        SELECT i.kind, o.epoch, o.tier, o.digest
        FROM old_rows o JOIN new_rows n USING (indicator_id, epoch, tier) JOIN indicators i ON i.id = o.indicator_id
        WHERE o.digest <> n.digest AND o.sealed IS NOT NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER publish_log_digest_replaced AFTER UPDATE ON digests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION publish_log_digest_replaced();

CREATE FUNCTION publish_log_digest_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.sealed IS NOT NULL THEN
        -- no row when the indicator itself is deleted (a cascade): its trigger logged the digest
        INSERT INTO publish_log (kind, epoch, tier, digest)
            SELECT i.kind, OLD.epoch, OLD.tier, OLD.digest FROM indicators i WHERE i.id = OLD.indicator_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER publish_log_digest_gone AFTER DELETE ON digests
    FOR EACH ROW EXECUTE FUNCTION publish_log_digest_gone();
