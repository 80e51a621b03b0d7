-- transactional: false
-- depends: 0001_bidding_productbid
--
-- The 7-day audit window ("calculated_at > now() - interval '7 days'") read through a BRIN index.
-- Bids are inserted in time order and never updated, so the heap is physically ordered by calculated_at and
-- a block-range summary (a few dozen KB at 10M rows, vs ~200-300 MB for a B-tree) selects the window's pages
-- as well as a B-tree does. 32 pages per range keeps the last, partly matching range small; autosummarize
-- lets autovacuum summarize ranges as they fill (unsummarized ranges are always read, so results stay right).
-- CONCURRENTLY (hence non-transactional) so the pricing agent keeps inserting while the index builds.
-- See docs/db-performance.md for the measurements.
CREATE INDEX CONCURRENTLY IF NOT EXISTS bidding_productbid_calculated_at_brin
    ON bidding_productbid USING brin (calculated_at) WITH (pages_per_range = 32, autosummarize = on);
