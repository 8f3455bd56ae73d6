-- 0001_init: packs, adapters, tags and the per-pack tensor index (DESIGN.md 5).
-- Migrations are append-only: a released file is never edited; a change is a new file.

-- One row per pack file objects/<2 hex>/<64 hex>. A row exists only once its
-- file is on disk (the pack is renamed into place before the row commits).
CREATE TABLE packs (
    digest       TEXT PRIMARY KEY NOT NULL,       -- SHA-256 of the pack's bytes, 64 lowercase hex
    stored_bytes INTEGER NOT NULL CHECK (stored_bytes >= 0),  -- the file's size
    raw_bytes    INTEGER NOT NULL CHECK (raw_bytes >= 0),     -- its tensors, uncompressed
    created      INTEGER NOT NULL                 -- Unix seconds
) WITHOUT ROWID;

-- One row per adapter version.
CREATE TABLE adapters (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    kind           TEXT NOT NULL,                 -- "lora", "road", "bottleneck", "mos"
    base_model     TEXT,                          -- base model id, or NULL
    rank           INTEGER NOT NULL DEFAULT 0,    -- LoRA/MoS r, bottleneck size; 0 for RoAd
    variant        TEXT,                          -- RoAd "road_1"...; else NULL
    group_size     INTEGER NOT NULL DEFAULT 0,    -- RoAd; else 0
    target_modules TEXT NOT NULL,                 -- JSON array of the adapted module names
    config         TEXT NOT NULL,                 -- adapter_config.json, compact, sorted keys
    raw_bytes      INTEGER NOT NULL,
    stored_bytes   INTEGER NOT NULL,
    pack           TEXT NOT NULL REFERENCES packs (digest),
    source         TEXT,                          -- path or URL it came from, or NULL
    description    TEXT,
    created        INTEGER NOT NULL,              -- Unix seconds
    UNIQUE (name, version)                        -- also the index for name lookups and ordering
);
CREATE INDEX adapters_kind ON adapters (kind);
CREATE INDEX adapters_base_model ON adapters (base_model);
-- Foreign-key checks on packs deletes, gc and verify look adapters up by pack.
CREATE INDEX adapters_pack ON adapters (pack);

-- key=value labels (task=gsm8k, user=alice); one value per key per adapter version.
CREATE TABLE tags (
    adapter_id INTEGER NOT NULL REFERENCES adapters (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (adapter_id, key)
) WITHOUT ROWID;
-- list --tag K=V: from the (key, value) pair straight to the adapter ids.
CREATE INDEX tags_key_value ON tags (key, value, adapter_id);

-- The tensors index: what each pack holds, as its header says, so that a tensor
-- can be found without opening packs and verify can cross-check header and rows.
CREATE TABLE pack_tensors (
    pack      TEXT NOT NULL REFERENCES packs (digest) ON DELETE CASCADE,
    name      TEXT NOT NULL,                      -- PEFT key
    dtype     TEXT NOT NULL,                      -- safetensors name: "F32", "BF16", ...
    shape     TEXT NOT NULL,                      -- JSON array, e.g. [16,64]
    raw_bytes INTEGER NOT NULL,
    sha256    TEXT NOT NULL,                      -- of the raw bytes, 64 lowercase hex
    PRIMARY KEY (pack, name)
) WITHOUT ROWID;
