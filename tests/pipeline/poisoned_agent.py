"""A real agent process (`python -m tests.pipeline.poisoned_agent pricing-agent|audit-agent`) with a bug injected:
its handler raises, as an unexpected exception would, for any batch holding an entry whose `product_id` is
`POISON_PRODUCT_ID`, for as long as the file named by `POISON_FILE` exists (deleting it "deploys the fix").

No real input does this to our handlers (each dead-letters what it knows it cannot handle), so the poison is
injected; everything else is the product: the worker, the bridge, Redis, PostgreSQL.
"""

from __future__ import annotations

import os
import sys

from processors import audit, pricing
from redis_streams.groups import Batch

POISON_PRODUCT_ID = "666"


class PoisonedEntry(RuntimeError):
    pass


def _check(batch: Batch) -> None:
    poisoned = [entry.id for entry in batch if entry.fields.get("product_id") == POISON_PRODUCT_ID]
    if poisoned and os.path.exists(os.environ["POISON_FILE"]):
        raise PoisonedEntry(f"cannot handle {poisoned[0]}")


_price = pricing.PricingHandler.__call__
_review = audit.AuditHandler.__call__


async def _poisoned_price(self: pricing.PricingHandler, batch: Batch) -> None:
    _check(batch)
    await _price(self, batch)


async def _poisoned_review(self: audit.AuditHandler, batch: Batch) -> None:
    _check(batch)
    await _review(self, batch)


pricing.PricingHandler.__call__ = _poisoned_price  # type: ignore[method-assign]
audit.AuditHandler.__call__ = _poisoned_review  # type: ignore[method-assign]

if __name__ == "__main__":
    from bidengine.cli import main

    sys.exit(main(sys.argv[1:]))
