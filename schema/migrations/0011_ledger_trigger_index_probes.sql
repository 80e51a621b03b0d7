-- depends: 0004_partitioned_bids_and_request_ledger
--
-- The ledger trigger (0004) runs once per statement and checks each stored bid against the ledger. Its plan
-- is made once per session from the ledger's statistics at that moment: while they say "small" (a new
-- database, a converted one before ANALYZE, or with autovacuum off), the planner hashes the whole ledger,
-- a scan of every request id ever stored for each batch of bids, which grows without bound. Planned
-- without hash or merge joins and without sequential scans, the check is one probe of the ledger's primary
-- key per bid, whatever the statistics say: ~30 us per bid fewer at 200k ledger rows, and it stays flat.
ALTER FUNCTION bidding_request_ledger_record()
    SET enable_hashjoin = off
    SET enable_mergejoin = off
    SET enable_seqscan = off;
