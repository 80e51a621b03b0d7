"""Every Redis key, stream and consumer group the product uses, and the functions that build the keyed ones.

Downstream consumers read these streams: a name changed here is a breaking change (see docs/streams.md).
Stream fields and their encodings: `schema.events`.
"""

from datetime import date
from typing import Final

# Gateway -> pricing agent: one entry per accepted bid request.
BID_REQUESTS: Final = "bids:requests"
PRICING_GROUP: Final = "pricing"

# Pricing agent -> downstream consumers and the audit agent: one entry per stored bid, after its commit.
BIDS_PRICED: Final = "bids:priced"
AUDIT_GROUP: Final = "audit"

# Consumers of a group announce themselves here while they read (sorted set: consumer -> last read, ms).
CONSUMERS_PREFIX: Final = "consumers:"

# Pricing agent -> gateway: replies, one stream per gateway process.
REPLY_STREAM_PREFIX: Final = "bids:replies:"

# Entries an agent gave up on, one dead-letter stream per agent (kept for on-call to replay or purge).
BIDS_DEAD_LETTER: Final = "bids:dead"  # requests of `bids:requests` the pricing agent could not store
AUDIT_DEAD_LETTER: Final = "audit:dead"  # entries of `bids:priced` the audit agent could not review

# Audit agent outputs.
AUDIT_FLAGS: Final = "audit:flags"
AUDIT_REPORTS: Final = "audit:reports"
AUDIT_AGGREGATE_PREFIX: Final = "audit:agg:"
AUDIT_SEEN_PREFIX: Final = "audit:seen:"
# One marker per UTC day: the first audit worker to set it runs that day's scheduled report.
AUDIT_REPORT_RUN_PREFIX: Final = "audit:reports:run:"

# Competitor monitor outputs: a list for existing consumers, a stream for ordered change feeds.
COMPETITOR_PRICES_LIST: Final = "competitor_prices"
COMPETITOR_PRICES_STREAM: Final = "competitor_prices:stream"

# On-call console: login attempts counted per user name and per client address, each for one window
# (CONSOLE_LOGIN_WINDOW_S, the key's TTL).
CONSOLE_LOGIN_USER_PREFIX: Final = "console:login:user:"
CONSOLE_LOGIN_ADDRESS_PREFIX: Final = "console:login:addr:"

# Every dead-letter stream and the stream its entries came from (the console and `bidengine dead-letters` list,
# replay and purge them).
DEAD_LETTER_STREAMS: Final = {BIDS_DEAD_LETTER: BID_REQUESTS, AUDIT_DEAD_LETTER: BIDS_PRICED}


def reply_stream(gateway_id: str) -> str:
    return f"{REPLY_STREAM_PREFIX}{gateway_id}"


def consumers_key(group: str) -> str:
    """The presence set of `group`'s consumers (`consumers:pricing`): who read recently, on Redis's clock."""
    return f"{CONSUMERS_PREFIX}{group}"


def audit_seen_key(id_range: int) -> str:
    """Bitmap of the bid ids already counted, one bit per id of one range (`schema.audit.seen_position`)."""
    return f"{AUDIT_SEEN_PREFIX}{{{id_range}}}"


def audit_seen_set_key(day: date) -> str:
    """Set of the bid ids counted for `day` by the audit agent before the bitmaps: only read, until they expire."""
    return f"{AUDIT_SEEN_PREFIX}{{{day.isoformat()}}}"


# The audit agent's per-UTC-day aggregates (the braces keep the names the dashboards already read).
def audit_day_key(day: date) -> str:
    """Hash of the day's overall counters (`schema.audit.DAY_FIELDS`)."""
    return f"{AUDIT_AGGREGATE_PREFIX}{{{day.isoformat()}}}"


def audit_products_key(day: date) -> str:
    """Hash of the day's per-product counters (`schema.audit.product_field`)."""
    return f"{audit_day_key(day)}:products"


def audit_report_run_key(day: date) -> str:
    return f"{AUDIT_REPORT_RUN_PREFIX}{day.isoformat()}"
