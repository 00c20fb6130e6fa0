-- imagine-bot schema, version 5: defaults.
-- A user's own defaults for /imagine (/settings); NULL: no default, the model's is used.
-- Names are checked against the configuration when used, not here: a model or style removed
-- from the config makes that default an error message, not a broken row.
CREATE TABLE user_defaults (
    user_id       INTEGER PRIMARY KEY,
    model         TEXT,
    aspect_ratio  TEXT,
    style         TEXT,
    steps         INTEGER CHECK (steps IS NULL OR steps > 0),
    sampler       TEXT,
    count         INTEGER CHECK (count IS NULL OR count > 0),
    updated_at    REAL NOT NULL
) STRICT;

-- A server's default style (/imagine-admin style), for members who pick none.
ALTER TABLE guild_settings ADD COLUMN default_style TEXT;
