-- 0002: the purchase cap per buyer belongs to the catalogue too, so that
-- `preload --from-postgres` sets it and `reconcile --fix` can restore it
-- after Redis lost a SKU. NULL: no cap (preload keeps the SKU's current one).
ALTER TABLE skus ADD COLUMN max_per_user integer CHECK (max_per_user >= 0);
