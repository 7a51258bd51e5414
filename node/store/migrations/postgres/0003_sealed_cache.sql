-- Petanda store, PostgreSQL, schema version 3.
-- A digest row keeps the sealed record last published for it and the metadata it was sealed with
-- (sealed_key: the indicator's category, first and last seen, confidence, TLP and reports as text).
-- Sealing is deterministic (synthetic nonces), so a publication reuses the bytes while the key still
-- matches and re-seals only the rows whose metadata changed. A new digest clears both.
ALTER TABLE digests ADD COLUMN sealed BYTEA;
ALTER TABLE digests ADD COLUMN sealed_key TEXT;
