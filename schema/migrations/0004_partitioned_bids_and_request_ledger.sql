-- depends: 0003_request_fingerprint
--
-- The bid store that stays fast as it grows: `bidding_productbid` becomes a table range-partitioned by day on
-- `calculated_at` (docs/db-performance.md). This migration only creates the new objects, next to the legacy
-- table and empty, so it is instant; `schema.partitioning.convert_to_partitioned` (run by apply_migrations
-- right after it) copies the rows online and swaps the names in one short transaction.
--
-- bidding_request_ledger: one row per stored bid, keyed by request id. PostgreSQL only enforces a unique
-- index on a partitioned table when it includes the partition key, and UNIQUE (request_id, calculated_at)
-- would not stop a retry (its calculated_at differs), so the request ids' uniqueness lives here, in an
-- unpartitioned table written by the same statement as the bid. It points at the bid by (id, calculated_at),
-- which names the bid's partition. A ledger row is deleted only with the partition of its bid (retention).
-- ~100 bytes per bid with its primary key (docs/capacity.md).
SET LOCAL lock_timeout = '10s';

CREATE TABLE bidding_request_ledger (
    request_id    uuid        PRIMARY KEY,
    bid_id        bigint      NOT NULL,
    calculated_at timestamptz NOT NULL
);

-- The same columns, in the same order, with the same defaults (the same id sequence) and checks. The primary
-- key must include the partition key; id alone stays unique because only the sequence assigns ids.
CREATE TABLE bidding_productbid_partitioned (
    id                  bigint         NOT NULL DEFAULT nextval('bidding_productbid_id_seq'::regclass),
    product_id          bigint         NOT NULL,
    current_cpc         numeric(12, 2) NOT NULL CHECK (current_cpc >= 0),
    target_roas         numeric(12, 4) NOT NULL CHECK (target_roas > 0),
    adjusted_cpc        numeric(12, 2) NOT NULL CHECK (adjusted_cpc >= 0),
    calculated_at       timestamptz    NOT NULL DEFAULT now(),
    request_id          uuid           NOT NULL,
    request_fingerprint bigint,
    CONSTRAINT bidding_productbid_id_day_pkey PRIMARY KEY (id, calculated_at)
) PARTITION BY RANGE (calculated_at);

-- Indexes. The primary key (id, calculated_at) serves lookups by id and the ledger's pointers.
-- calculated_at: the window's bound is now() - 7 days, known only when the query runs, so the planner costs
-- every partition; with this index a partition outside the window costs an empty index scan (else a
-- whole-partition scan), which is what makes the Merge Append below cheaper than one big sort. The executor
-- then prunes those partitions before reading any. Time-ordered inserts append at its right edge.
-- product_id: NOT on the parent. Each partition gets its own while its day can be in the 7-day window, so
-- the 7-day query in product order is a Merge Append of ordered index scans (no sort); maintenance drops it
-- once the day has left the window. It must be partition-local for that (PostgreSQL refuses to drop one
-- partition's part of a parent's index), and it must go: the planner uses an index in product order for
-- every partition that has one, out-of-window ones included, whatever that costs.
CREATE INDEX bidding_productbid_by_time ON bidding_productbid_partitioned (calculated_at);

-- A bid whose day has no partition yet is stored here rather than refused; maintenance moves it out.
CREATE TABLE bidding_productbid_default PARTITION OF bidding_productbid_partitioned DEFAULT;
CREATE INDEX bidding_productbid_default_product_id ON bidding_productbid_default (product_id);

-- Every statement that inserts bids records their request ids, so any writer keeps the ledger whole (the
-- pricing agent's store claims them first, in the same statement: this then finds them and adds nothing). A
-- request id the ledger holds for another bid fails the insert with a unique violation, as UNIQUE (request_id)
-- did. Once per statement, on its transition table: a few index probes per bid, no per-row trigger call.
-- (Rows moved between partitions by maintenance are inserted into the partitions themselves: not fired.)
CREATE FUNCTION bidding_request_ledger_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bidding_request_ledger (request_id, bid_id, calculated_at)
    SELECT n.request_id, n.id, n.calculated_at FROM stored_bids n
    WHERE NOT EXISTS (
        SELECT 1 FROM bidding_request_ledger l WHERE l.request_id = n.request_id AND l.bid_id = n.id
    );
    RETURN NULL;
END
$$;
CREATE TRIGGER bidding_productbid_ledger AFTER INSERT ON bidding_productbid_partitioned
    REFERENCING NEW TABLE AS stored_bids FOR EACH STATEMENT EXECUTE FUNCTION bidding_request_ledger_record();

-- While the legacy table is copied, every bid inserted into it is also written to the new table (whose
-- trigger above records it in the ledger; ON CONFLICT: the copy may have written it already).
CREATE FUNCTION bidding_productbid_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bidding_productbid_partitioned VALUES (NEW.*) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
