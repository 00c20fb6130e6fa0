-- imagine-bot schema, version 1.
-- Applied by bot/store.py inside one transaction; PRAGMA user_version is set by the runner.
-- Discord ids (snowflakes) fit in SQLite's signed 64-bit INTEGER. Times are unix seconds (REAL).
-- STRICT tables: a wrong type is an error instead of being stored as-is.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,          -- Discord user id
    first_seen  REAL NOT NULL,
    last_seen   REAL NOT NULL
) STRICT;

CREATE TABLE jobs (
    -- AUTOINCREMENT: ids are never reused, so a job id quoted to a user ("job 42") or stored
    -- in rerolled_from keeps meaning the same job even after rows are deleted.
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL REFERENCES users (id),
    guild_id           INTEGER,                 -- NULL in DMs
    channel_id         INTEGER,
    state              TEXT NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),

    -- GenerationRequest, one column per field, so a job can be re-run or re-rolled exactly.
    prompt             TEXT NOT NULL,
    negative_prompt    TEXT NOT NULL,
    width              INTEGER NOT NULL CHECK (width > 0),
    height             INTEGER NOT NULL CHECK (height > 0),
    steps              INTEGER NOT NULL CHECK (steps > 0),
    guidance           REAL NOT NULL,
    seed               INTEGER NOT NULL,
    sampler            TEXT NOT NULL,
    count              INTEGER NOT NULL CHECK (count > 0),
    model              TEXT NOT NULL,

    created_at         REAL NOT NULL,
    started_at         REAL,
    finished_at        REAL,
    error              TEXT,                    -- set when state = 'failed'
    elapsed_s          REAL,                    -- generation time reported by the worker
    notes              TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(notes)),  -- JSON list of str
    grid_path          TEXT,                    -- the grid PNG when count > 1
    delivered_at       REAL,                    -- set once, by mark_delivered (exactly-once guard)

    -- Where the result goes. The interaction token lives 15 min; after token_expires_at the
    -- bot posts to channel_id instead.
    interaction_token  TEXT,
    application_id     INTEGER,
    token_expires_at   REAL,
    message_id         INTEGER,                 -- the bot's progress/result message
    rerolled_from      INTEGER REFERENCES jobs (id) ON DELETE SET NULL,

    -- Belt and braces: the store enforces the state machine, these catch a bug in it.
    CHECK ((state = 'failed') = (error IS NOT NULL)),
    CHECK (state NOT IN ('running', 'done') OR started_at IS NOT NULL),
    CHECK (state != 'done' OR elapsed_s IS NOT NULL),
    CHECK ((state IN ('done', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
) STRICT;

-- The queue is rebuilt from unfinished jobs at start-up; few rows match, so a partial index.
CREATE INDEX jobs_unfinished ON jobs (id) WHERE state IN ('queued', 'running');
-- history, count_history, user_jobs.
CREATE INDEX jobs_user ON jobs (user_id, id);
-- Reactions and buttons after a restart arrive with only a message id.
CREATE INDEX jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;
-- Re-delivery after a restart.
CREATE INDEX jobs_undelivered ON jobs (id)
    WHERE delivered_at IS NULL AND state IN ('done', 'failed');

CREATE TABLE job_images (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL CHECK (idx >= 0),  -- position in the result, 0-based
    path    TEXT NOT NULL,
    seed    INTEGER NOT NULL,
    width   INTEGER NOT NULL,
    height  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) STRICT, WITHOUT ROWID;

-- One row per accepted request: the ledger the sliding-window rate limits are computed from.
-- No foreign key to users: an event is recorded before its job exists, and events are pruned
-- on their own schedule.
CREATE TABLE rate_events (
    id        INTEGER PRIMARY KEY,
    user_id   INTEGER NOT NULL,
    guild_id  INTEGER,
    at        REAL NOT NULL,
    images    INTEGER NOT NULL CHECK (images > 0)
) STRICT;

-- Covering indexes: the window sums read only the index.
CREATE INDEX rate_events_user ON rate_events (user_id, at, images);
CREATE INDEX rate_events_guild ON rate_events (guild_id, at, images) WHERE guild_id IS NOT NULL;
CREATE INDEX rate_events_at ON rate_events (at);

CREATE TABLE guild_settings (
    guild_id             INTEGER PRIMARY KEY,
    allowed_channel_ids  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(allowed_channel_ids)),
    blocked_words        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(blocked_words)),
    -- {"images_per_window": int, "window_minutes": number, "max_queued": int}, each optional.
    limit_overrides      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(limit_overrides)),
    updated_at           REAL NOT NULL
) STRICT;
