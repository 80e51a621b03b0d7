DROP TABLE bidding_productbid;
