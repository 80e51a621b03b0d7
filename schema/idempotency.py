"""What "the same request" means for an `Idempotency-Key`: the fingerprint stored with each bid.

A retry under a key replays the stored bid only if it is the same request; any other body under that key is
refused (422). "The same" is decided on the request as the gateway understood it, not on its JSON text and not
on the values after rounding them to the table's columns: the product id (an integer) and `current_cpc` and
`target_roas` as the IEEE-754 doubles the price is computed from. So `2`, `2.0`, `"2"`, `"2.00"` and `2e0` are
one request (one value), and `1.001` and `1.004` are two (two values), although both are stored as 1.00.

The fingerprint is BLAKE2b with an 8-byte digest over 24 bytes: `product_id` as a big-endian signed 64-bit
integer, then `current_cpc` and `target_roas` as big-endian IEEE-754 binary64 (-0.0 written as 0.0: the same
value); the digest is read as a big-endian signed 64-bit integer, so it fits a PostgreSQL `bigint`. A binary
encoding of the doubles needs no shortest-repr algorithm to be reproduced in another language. The bid stream
carries the floats as `repr` strings, which parse back to the same doubles, so the pricing agent computes the
fingerprint of exactly what the gateway validated; the stream contract needs no new field.

Two different requests share a fingerprint with probability 2**-64 per pair compared: only requests under one
key are ever compared, so a collision (a conflict answered as a replay) is not a practical concern.
"""

from __future__ import annotations

import struct
from hashlib import blake2b

_pack_canonical = struct.Struct(">qdd").pack
_unpack_signed = struct.Struct(">q").unpack


def request_fingerprint(product_id: int, current_cpc: float, target_roas: float) -> int:
    """The signed 64-bit fingerprint of a bid request (see the module docstring for the exact encoding)."""
    try:
        # Adding 0.0 turns -0.0 into 0.0 and changes no other double.
        canonical = _pack_canonical(product_id, current_cpc + 0.0, target_roas + 0.0)
    except struct.error:
        raise ValueError(f"product_id {product_id} is not a 64-bit integer") from None
    fingerprint: int = _unpack_signed(blake2b(canonical, digest_size=8).digest())[0]
    return fingerprint
