"""The bids table in its legacy layout (unpartitioned, UNIQUE (request_id)), for old-vs-new comparisons.

`legacy_database(server_url)` yields a fresh database migrated only up to 0003 (what deployments ran before
the day partitions); `LEGACY_STORE_BATCH_SQL` is the pricing agent's store statement for that layout, as it
was shipped. Both layouts are then measured in the same run (bench.db_partitions, bench.pipeline).
"""

from __future__ import annotations

import contextlib

from bench.support import fresh_database
from schema.database import BIDS_TABLE

LEGACY_LAST_MIGRATION = "0003_request_fingerprint"

LEGACY_STORE_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::float8[], $4::float8[], $5::float8[], $6::bigint[])
        AS t(request_id, product_id, current_cpc, target_roas, adjusted_cpc, request_fingerprint)
), inserted AS (
    INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc, request_fingerprint)
    SELECT request_id, product_id, current_cpc, target_roas, adjusted_cpc, request_fingerprint FROM input
    ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_fingerprint
)
SELECT * FROM inserted
UNION ALL
SELECT b.id, b.request_id, b.product_id, b.current_cpc, b.target_roas, b.adjusted_cpc, b.calculated_at,
       b.request_fingerprint
FROM {BIDS_TABLE} b JOIN input USING (request_id)
"""


def legacy_database(server_url: str) -> contextlib.AbstractContextManager[str]:
    """A uniquely named database in the legacy layout (migrations up to 0003), dropped afterwards; yields its URL."""
    return fresh_database(server_url, prefix="bidengine_bench_legacy", up_to=LEGACY_LAST_MIGRATION)
