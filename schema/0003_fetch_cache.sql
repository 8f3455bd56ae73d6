-- 0003_fetch_cache: what earlier pulls fetched, so that the next pull of the
-- same source revalidates (If-None-Match) instead of downloading again
-- (DESIGN.md 5, 7). Only a hint: a row that is wrong or missing costs a
-- download, never a wrong adapter, since every byte is verified anyway.

-- One row per fetched URL (a PEFT or hf:// file, a published index.json), and
-- per published-store reference pulled ("URL#NAME" or "URL#NAME@V", resolved
-- against the index whose digest is in sha256).
CREATE TABLE fetch_cache (
    url     TEXT PRIMARY KEY NOT NULL,
    etag    TEXT,             -- the ETag the server sent with these bytes, or NULL
    sha256  TEXT,             -- SHA-256 of the bytes (for a reference: of the index)
    size    INTEGER,          -- bytes of the file, or NULL
    pack    TEXT,             -- the pack the pull that fetched it produced, or NULL
    fetched INTEGER NOT NULL  -- Unix seconds
) WITHOUT ROWID;
