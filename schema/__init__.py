"""Contracts shared by every role: Redis key names, event and record models, settings, the SQL schema."""
