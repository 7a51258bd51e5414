-- Petanda store, PostgreSQL, schema version 4.
-- The node's OPRF keys (purpose 'oprf', one per epoch) and the HMAC-tier federation secret ('hmac', one
-- per generation: a replaced secret is a new row), each wrapped (AES-256-GCM-SIV) under the
-- key-encryption key every replica holds in a file (node.keystore): any replica can rotate or import,
-- and every replica reads the new key here. A row is never changed: a new key is a new row.
CREATE TABLE wrapped_keys (
    purpose    TEXT   NOT NULL CHECK (purpose IN ('oprf', 'hmac')),
    epoch      BIGINT NOT NULL CHECK (epoch >= 1),
    kek        TEXT   NOT NULL CHECK (length(kek) = 64),
    blob       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (purpose, epoch)
);
CREATE FUNCTION wrapped_keys_unchanged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a wrapped key is never changed';
END;
$$;
CREATE TRIGGER wrapped_keys_no_update BEFORE UPDATE ON wrapped_keys
    FOR EACH ROW EXECUTE FUNCTION wrapped_keys_unchanged();
