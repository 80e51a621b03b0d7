-- The legacy table, kept by name and columns so existing SQL and reports keep working,
-- plus the request id that makes a redelivered or retried request store nothing new.
CREATE TABLE bidding_productbid (
    id            bigserial      PRIMARY KEY,
    product_id    bigint         NOT NULL,
    current_cpc   numeric(12, 2) NOT NULL CHECK (current_cpc >= 0),
    target_roas   numeric(12, 4) NOT NULL CHECK (target_roas > 0),
    adjusted_cpc  numeric(12, 2) NOT NULL CHECK (adjusted_cpc >= 0),
    calculated_at timestamptz    NOT NULL DEFAULT now(),
    request_id    uuid           NOT NULL,
    CONSTRAINT bidding_productbid_request_id_key UNIQUE (request_id)
);
