-- Petanda store, PostgreSQL, schema version 3: reserved.
-- Version 3 is assigned to another branch of the same release; this no-op keeps the versions 1..N
-- until that branch's 0003 replaces this file at merge.
SELECT 1;
