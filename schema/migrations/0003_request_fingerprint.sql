-- depends: 0002_audit_calculated_at_brin
--
-- The fingerprint of the request each bid was stored for (schema/idempotency.py): a retry under the same
-- Idempotency-Key is answered with the stored bid only when its fingerprint is equal, so "the same request" is
-- decided on the values the bidder sent, not on the values after rounding to numeric(12, 2).
-- Nullable with no default: PostgreSQL then only records the column in the catalog (no table rewrite, instant
-- on a big table). Rows stored before this migration keep NULL and are compared by their stored values.
-- The ALTER needs a brief ACCESS EXCLUSIVE lock; give up rather than queue every insert behind a long query.
SET LOCAL lock_timeout = '10s';
ALTER TABLE bidding_productbid ADD COLUMN request_fingerprint bigint;
