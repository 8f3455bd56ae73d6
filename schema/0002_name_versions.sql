-- 0002_name_versions: NAME@V stays a stable identifier. Without this table an
-- automatic version was max(version) + 1 over the rows that remain, so after
-- `rm a@2` the next `add a` would call different bytes 'a@2' again.

-- The highest version each name has ever had, rows since removed included.
-- Automatic versions count on from here; `rm` never lowers it.
CREATE TABLE names (
    name         TEXT PRIMARY KEY NOT NULL,
    last_version INTEGER NOT NULL CHECK (last_version > 0)
) WITHOUT ROWID;

-- What earlier removals took is unknown: the rows left are the best record.
INSERT INTO names (name, last_version)
    SELECT name, max(version) FROM adapters GROUP BY name;
