ALTER TABLE bidding_productbid DROP COLUMN request_fingerprint;
