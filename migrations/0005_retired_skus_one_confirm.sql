-- 0005: (1) SKUs an operator retired (`flashgate reconcile --retire --sku S`)
-- after cleaning them out of Redis on purpose: reconcile no longer reports
-- them as missing in Redis, and `--fix` never restores them (their old sales
-- stay on the ledger, not back in Redis).
CREATE TABLE retired_skus (
    sku        text PRIMARY KEY,
    retired_at timestamptz NOT NULL DEFAULT now()
);

-- (2) One `confirmed` row per reservation. A confirm retried after a failover
-- can append a second `confirmed` entry for the same reservation; the ledger
-- writer's `ON CONFLICT DO NOTHING` now skips it. Duplicates an older version
-- wrote are kept, renamed `confirmed_duplicate` (reconcile ignores that kind).
UPDATE ledger_events e SET kind = 'confirmed_duplicate'
WHERE e.kind = 'confirmed' AND EXISTS (
    SELECT 1 FROM ledger_events f
    WHERE f.kind = 'confirmed' AND f.sku = e.sku AND f.rid = e.rid AND f.id < e.id
);
CREATE UNIQUE INDEX ledger_events_one_confirm ON ledger_events (sku, rid)
    WHERE kind = 'confirmed';
