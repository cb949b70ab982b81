-- 0007: a SKU's sale window belongs to the catalogue too, so that
-- `preload --from-postgres` sets it (docs/fair-draw.md). NULL: no bound
-- (preload keeps the SKU's current window when both are NULL).
ALTER TABLE skus ADD COLUMN opens_at timestamptz;
ALTER TABLE skus ADD COLUMN closes_at timestamptz;
ALTER TABLE skus ADD CONSTRAINT skus_sale_window
  CHECK (opens_at IS NULL OR closes_at IS NULL OR closes_at > opens_at);
