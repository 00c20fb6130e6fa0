-- imagine-bot schema, version 3: the users table goes. It was written with every job and
-- never read; jobs.user_id keeps the Discord user id.
-- SQLite cannot drop a foreign key (jobs.user_id REFERENCES users) in place, so jobs is
-- rebuilt by SQLite's documented procedure: the runner (bot/store/database.py) applies
-- migrations with foreign_keys off, so dropping the old jobs table cascades into nothing, and
-- runs PRAGMA foreign_key_check before it commits. Columns, checks and indexes are those of
-- 0001 and 0002, minus the reference to users.

CREATE TABLE jobs_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL,        -- Discord user id
    guild_id           INTEGER,
    channel_id         INTEGER,
    state              TEXT NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),

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
    error              TEXT,
    elapsed_s          REAL,
    notes              TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(notes)),
    grid_path          TEXT,
    delivered_at       REAL,

    interaction_token  TEXT,
    application_id     INTEGER,
    token_expires_at   REAL,
    message_id         INTEGER,
    -- Names the final table: after the rename below it points at the rebuilt jobs.
    rerolled_from      INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    rate_event_id      INTEGER,

    CHECK ((state = 'failed') = (error IS NOT NULL)),
    CHECK (state NOT IN ('running', 'done') OR started_at IS NOT NULL),
    CHECK (state != 'done' OR elapsed_s IS NOT NULL),
    CHECK ((state IN ('done', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
) STRICT;

INSERT INTO jobs_new (
    id, user_id, guild_id, channel_id, state, prompt, negative_prompt, width, height, steps,
    guidance, seed, sampler, count, model, created_at, started_at, finished_at, error,
    elapsed_s, notes, grid_path, delivered_at, interaction_token, application_id,
    token_expires_at, message_id, rerolled_from, rate_event_id
)
SELECT
    id, user_id, guild_id, channel_id, state, prompt, negative_prompt, width, height, steps,
    guidance, seed, sampler, count, model, created_at, started_at, finished_at, error,
    elapsed_s, notes, grid_path, delivered_at, interaction_token, application_id,
    token_expires_at, message_id, rerolled_from, rate_event_id
FROM jobs;

-- Keep AUTOINCREMENT's high-water mark, not just the largest id still present: ids of deleted
-- jobs are never handed out again. The rename below carries the row along.
DELETE FROM sqlite_sequence WHERE name = 'jobs_new';
UPDATE sqlite_sequence SET name = 'jobs_new' WHERE name = 'jobs';

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_unfinished ON jobs (id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_user ON jobs (user_id, id);
CREATE INDEX jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX jobs_undelivered ON jobs (id)
    WHERE delivered_at IS NULL AND state IN ('done', 'failed');

DROP TABLE users;
