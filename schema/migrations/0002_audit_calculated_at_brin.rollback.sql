-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS bidding_productbid_calculated_at_brin;
