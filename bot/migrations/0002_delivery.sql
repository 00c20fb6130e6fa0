-- imagine-bot schema, version 2: nothing lost.
-- rate_event_id: the rate-limit charge of the job, refunded when the user gets nothing (the
-- generation failed, or Discord never accepted the result).
-- delivered_at now means "delivery settled": set after Discord confirmed the result (or the
-- failure notice), or when the bot gave up on Discord; then state is 'failed', error says so,
-- and the job's images are kept.
ALTER TABLE jobs ADD COLUMN rate_event_id INTEGER;

-- One row: a random id of this database. Channel posts carry "<instance>-<job id>" as their
-- nonce, which Discord dedupes per author for a few minutes: job ids alone would collide
-- between two databases (a wiped one, a second bot on the same token).
CREATE TABLE instance (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    id         TEXT NOT NULL
) STRICT;
INSERT INTO instance (singleton, id) VALUES (1, lower(hex(randomblob(5))));
