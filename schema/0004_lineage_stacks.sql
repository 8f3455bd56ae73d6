-- 0004_lineage_stacks: how a composed adapter was made (lineage), and stacks:
-- catalogue entries that are an ordered recipe of other adapters' packs and
-- have no pack of their own (DESIGN.md 3.5, 5, 9).
--
-- adapters.pack was NOT NULL, and SQLite cannot drop a NOT NULL constraint in
-- place, so the table is rebuilt by SQLite's documented procedure for schema
-- changes ("Making Other Kinds Of Table Schema Changes", lang_altertable):
-- new table, copy, drop, rename, recreate the indexes. actl__store_migrate
-- turns foreign keys off around the transaction (the pragma is a no-op inside
-- one, and with them on the DROP below would cascade into tags) and checks
-- with PRAGMA foreign_key_check before committing that no reference broke.
-- Rows keep their ids, so tags.adapter_id still names the same versions.

CREATE TABLE adapters_new (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    kind           TEXT NOT NULL,                 -- "lora", "road", "bottleneck", "mos", "stack"
    base_model     TEXT,                          -- base model id, or NULL
    rank           INTEGER NOT NULL DEFAULT 0,    -- LoRA/MoS r, bottleneck size; 0 for RoAd, stacks
    variant        TEXT,                          -- RoAd "road_1"...; else NULL
    group_size     INTEGER NOT NULL DEFAULT 0,    -- RoAd; else 0
    target_modules TEXT NOT NULL,                 -- JSON array of the adapted module names
    config         TEXT NOT NULL,                 -- adapter_config.json, compact, sorted keys;
                                                  -- a stack: its recipe (store.c)
    raw_bytes      INTEGER NOT NULL,              -- a stack: the sums over its members
    stored_bytes   INTEGER NOT NULL,
    pack           TEXT REFERENCES packs (digest), -- NULL for a stack, and only for one
    source         TEXT,                          -- path or URL it came from, or NULL
    description    TEXT,
    created        INTEGER NOT NULL,              -- Unix seconds
    lineage        TEXT,                          -- JSON object: how it was made, or NULL
    UNIQUE (name, version),                       -- also the index for name lookups and ordering
    CHECK ((kind = 'stack') = (pack IS NULL))
);

INSERT INTO adapters_new (id, name, version, kind, base_model, rank, variant, group_size,
                          target_modules, config, raw_bytes, stored_bytes, pack, source,
                          description, created)
    SELECT id, name, version, kind, base_model, rank, variant, group_size, target_modules,
           config, raw_bytes, stored_bytes, pack, source, description, created
    FROM adapters;

DROP TABLE adapters;
ALTER TABLE adapters_new RENAME TO adapters;

CREATE INDEX adapters_kind ON adapters (kind);
CREATE INDEX adapters_base_model ON adapters (base_model);
-- Foreign-key checks on packs deletes, gc and verify look adapters up by pack.
CREATE INDEX adapters_pack ON adapters (pack);

-- The members of each stack, in the order they apply. Members are named by
-- pack, not by adapter row: removing the adapter a stack was made from leaves
-- the stack whole, and gc keeps every pack named here.
CREATE TABLE stack_members (
    adapter_id  INTEGER NOT NULL REFERENCES adapters (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL CHECK (position > 0),  -- 1 applies first
    pack        TEXT NOT NULL REFERENCES packs (digest),
    weight      REAL NOT NULL,
    member_ref  TEXT NOT NULL,                -- "name@version", or the directory it came from
    member_kind TEXT NOT NULL,                -- the member's kind ("lora", "road", ...)
    PRIMARY KEY (adapter_id, position)
) WITHOUT ROWID;
-- gc, verify and foreign-key checks on packs deletes look members up by pack.
CREATE INDEX stack_members_pack ON stack_members (pack);
