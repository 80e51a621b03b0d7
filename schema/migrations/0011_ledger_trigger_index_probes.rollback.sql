ALTER FUNCTION bidding_request_ledger_record() RESET ALL;
