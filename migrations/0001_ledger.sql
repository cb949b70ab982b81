-- 0001: the book of record for flashgate's sales.
--
-- Applied by `flashgate migrate`, and at the start of every ledger writer, in
-- one transaction under an advisory lock (src/db.rs), so concurrent starters
-- apply it once. Never edit a migration that has shipped: add the next file.

-- The catalogue ops fill before a sale; `flashgate preload --from-postgres`
-- loads these rows into Redis.
CREATE TABLE skus (
    sku        text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9_-]{1,64}$'),
    stock      bigint NOT NULL CHECK (stock >= 0),
    shards     integer NOT NULL DEFAULT 4 CHECK (shards BETWEEN 1 AND 256),
    loaded_at  timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every stock change, once. Rows come from the shards' outbox streams
-- (source 'outbox'; (stream, entry_id) is the stream entry, so a redelivered
-- entry is a no-op) or from reconcile, which backfills events Redis proves
-- happened but the outbox never delivered, and closes holds Redis lost
-- (source 'reconcile'; stream 'reconcile', entry_id '<rid>:<kind>').
--
-- kind: preload (qty = change of the shard's available units), held,
-- confirmed, released, expired, xfer_out / xfer_in (rid = transfer id,
-- user_id = the other shard). Kinds are not constrained: a newer flashgate may
-- emit kinds an older reconcile ignores.
CREATE TABLE ledger_events (
    id         bigserial PRIMARY KEY,
    stream     text NOT NULL,
    entry_id   text NOT NULL,
    sku        text NOT NULL,
    shard      integer NOT NULL,
    kind       text NOT NULL,
    rid        text NOT NULL DEFAULT '',
    qty        bigint NOT NULL,
    user_id    text NOT NULL DEFAULT '',
    event_at   timestamptz NOT NULL,
    source     text NOT NULL DEFAULT 'outbox',
    written_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, entry_id)
);
CREATE INDEX ledger_events_by_shard ON ledger_events (sku, shard);

-- One row per correction `flashgate reconcile --fix` made, in Redis or in the ledger.
CREATE TABLE reconcile_audit (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    sku          text NOT NULL,
    shard        integer NOT NULL,
    -- a Redis counter (available, held, sold, initial, xfer_in, xfer_out),
    -- or ledger_backfill / hold_lost / record
    what         text NOT NULL,
    rid          text NOT NULL DEFAULT '',
    redis_before bigint,
    redis_after  bigint,
    detail       text NOT NULL,
    forced       boolean NOT NULL DEFAULT false
);
