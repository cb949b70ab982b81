-- 0004: a fix's audit is written before the fix: `reconcile --fix` writes its
-- rows as 'intended' and commits them before it corrects Redis, then marks
-- them 'done' (or 'abandoned' when the shard moved and nothing was written).
-- Rows still 'intended' belong to a fix cut off between the two; the next
-- run on that shard re-checks it, repairs what is left and marks them
-- 'finished'. Rows written before this migration were written after their
-- fix: 'done'.
ALTER TABLE reconcile_audit ADD COLUMN state text NOT NULL DEFAULT 'done';
