-- imagine-bot schema, version 4: jobs that start from a picture (upscale, variations, zoom
-- out, img2img from an attachment). Nothing lost; every existing job keeps NULL in the new
-- columns (a txt2img job, from no picture and no parent).
--
-- ADD COLUMN, not a rebuild as in 0003: the new columns are nullable without a default, so
-- SQLite edits the schema and tests each added CHECK against the rows already there (all pass:
-- every new column is NULL in them). A column's CHECK may name other columns of the row, as a
-- table constraint does (SQLite: "in practice it makes no difference"), so a check that ties
-- columns together sits on a column added after every column it names.

-- GenerationRequest.source (inference.types.ImageSource): one column per field, so a queued
-- job can be rebuilt after a restart. `source_path` is a PNG the worker reads when the job runs.
ALTER TABLE jobs ADD COLUMN source_path TEXT;
ALTER TABLE jobs ADD COLUMN source_width INTEGER CHECK (source_width > 0);
ALTER TABLE jobs ADD COLUMN source_height INTEGER CHECK (source_height > 0);
ALTER TABLE jobs ADD COLUMN operation TEXT
    CHECK (operation IN ('img2img', 'upscale', 'zoom_out'));
ALTER TABLE jobs ADD COLUMN strength REAL CHECK (strength > 0 AND strength <= 1);
ALTER TABLE jobs ADD COLUMN scale REAL CHECK (scale > 0);
-- NULL with a source: Lanczos. Set only with a source.
ALTER TABLE jobs ADD COLUMN upscaler TEXT
    CHECK (upscaler IS NULL OR source_path IS NOT NULL)
    -- A source is all there or not at all: a half-written one cannot be re-run.
    CHECK (
        (source_path IS NULL) = (source_width IS NULL)
        AND (source_path IS NULL) = (source_height IS NULL)
        AND (source_path IS NULL) = (operation IS NULL)
        AND (source_path IS NULL) = (strength IS NULL)
        AND (source_path IS NULL) = (scale IS NULL)
    );

-- JobRecord.parent (inference.jobs.Lineage): image `parent_image_idx` (0-based) of job
-- `parent_job_id`, for a job made from a result. Like rerolled_from, the link goes NULL when
-- the parent row is deleted; the index then stays behind, meaningless, so the pairing check
-- runs one way only (a parent needs its index, an index may outlive its parent).
ALTER TABLE jobs ADD COLUMN parent_job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN parent_image_idx INTEGER
    CHECK (parent_image_idx >= 0)
    CHECK (parent_job_id IS NULL OR parent_image_idx IS NOT NULL)
    -- Made from a parent's image means made from a picture.
    CHECK (parent_job_id IS NULL OR source_path IS NOT NULL);

-- Deleting a job looks up its children (ON DELETE SET NULL); without an index that scans jobs.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
