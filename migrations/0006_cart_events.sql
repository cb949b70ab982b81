-- 0006: carts on the ledger (issue 22; docs/carts.md, "Ledger").
--
-- Every change of a cart's status, once: rows come from the 16 cart outbox
-- streams `fg:{carts~X}:events` (appended by lua/cart_begin.lua and
-- lua/cart_move.lua in the same step as the change). (stream, entry_id) is
-- the stream entry, so an entry delivered again (a writer killed between
-- its insert and its XACK) is a no-op. A cart's lines are ordinary holds:
-- their held/confirmed/released/expired events stay in ledger_events; here
-- `lines` names them: one line per cart line, `<sku>|<qty>|<reservation id>`
-- (the id empty while the line is not held yet).
--
-- status: pending (created), held, compensating, failed, confirming,
-- confirmed, incomplete, releasing, released, expired. seq: the cart's own
-- event counter (1 = created), so the last state is the highest seq.
CREATE TABLE cart_events (
    id         bigserial PRIMARY KEY,
    stream     text NOT NULL,
    entry_id   text NOT NULL,
    cart_id    text NOT NULL,
    seq        bigint NOT NULL,
    status     text NOT NULL,
    owner      text NOT NULL DEFAULT '',
    user_id    text NOT NULL DEFAULT '',
    lines      text NOT NULL DEFAULT '',
    why        text NOT NULL DEFAULT '',
    bad        text NOT NULL DEFAULT '',
    event_at   timestamptz NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, entry_id)
);
CREATE INDEX cart_events_by_cart ON cart_events (cart_id, seq);

-- Each cart as its last event left it.
CREATE VIEW carts AS
SELECT DISTINCT ON (cart_id)
    cart_id, status, seq, owner, user_id, lines, why, bad, event_at
FROM cart_events
ORDER BY cart_id, seq DESC, event_at DESC, id DESC;

-- Reconcile looks a cart's lines up by reservation id.
CREATE INDEX ledger_events_by_rid ON ledger_events (rid);
