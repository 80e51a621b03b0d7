"""Competitor price monitor: polls a DummyJSON-compatible products API and publishes prices to Redis.

Only `schema` (and `legacy`) may be imported from here; `ingest` and `processors` never are.
"""
