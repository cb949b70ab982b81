-- 0003: outbox entries PostgreSQL refused (a value no column takes, e.g. a
-- NUL byte), parked here by the ledger writer so that the entry is
-- acknowledged and its stream goes on instead of re-reading it for ever.
-- `fields` is the entry's field/value pairs with control characters escaped.
-- Counted by flashgate_ledger_dead_letters_total (alert
-- FlashgateLedgerDeadLetters); docs/reconcile.md says what to do with them.
CREATE TABLE ledger_dead_letters (
    id        bigserial PRIMARY KEY,
    stream    text NOT NULL,
    entry_id  text NOT NULL,
    sku       text NOT NULL,
    shard     integer NOT NULL,
    fields    text NOT NULL,
    error     text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, entry_id)
);
