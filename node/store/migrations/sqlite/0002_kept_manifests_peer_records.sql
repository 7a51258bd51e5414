-- Petanda store, SQLite, schema version 2.
-- Every manifest the node published is kept forever: pruning a publication drops its filters and
-- buckets and marks it pruned. (Versions pruned before this migration are gone already.)
ALTER TABLE publications ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0 CHECK (pruned = 0 OR pruned = 1);

-- A peer's sealed record set per (kind, tier), cached with its filters and replaced with them.
CREATE TABLE peer_records (
    peer_id TEXT    NOT NULL REFERENCES peer_manifests (peer_id) ON DELETE CASCADE,
    kind    TEXT    NOT NULL,
    tier    INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (peer_id, kind, tier)
) WITHOUT ROWID;

-- At most the latest 64 tree heads per peer (by size, timestamp, root), as save_peer_tree_head keeps.
DELETE FROM peer_tree_heads WHERE (peer_id, size, timestamp, root) IN (
    SELECT peer_id, size, timestamp, root FROM (
        SELECT peer_id, size, timestamp, root, row_number() OVER (
            PARTITION BY peer_id ORDER BY size DESC, timestamp DESC, root DESC) AS n
        FROM peer_tree_heads)
    WHERE n > 64);
