-- depends: 0002_audit_calculated_at_brin
--
-- The fingerprint of the request each bid was stored for (schema/idempotency.py): a retry under the same
-- Idempotency-Key is answered with the stored bid only when its fingerprint is equal, so "the same request" is
-- decided on the values the bidder sent, not on the values after rounding to numeric(12, 2).
-- Nullable with no default: PostgreSQL then only records the column in the catalog (no table rewrite, instant
-- on a big table). Rows stored before this migration keep NULL and are compared by their stored values, and so
-- are rows that agents of the previous version store during a rolling upgrade (they ignore the column).
-- The ALTER needs a brief ACCESS EXCLUSIVE lock: give up after 10 s rather than queue every insert behind a long
-- query (the 7-day audit); a failed attempt changes nothing and can be run again (the Helm Job retries itself).
SET LOCAL lock_timeout = '10s';
ALTER TABLE bidding_productbid ADD COLUMN request_fingerprint bigint;
