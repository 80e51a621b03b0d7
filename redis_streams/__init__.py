"""Redis Streams mechanics shared by the roles: packed pipelines, consumer groups, trimming, dead letters.

The bottom of the stack beside `schema/`: it imports `schema` (for key names and encodings) and nothing of
the roles. What a stream *means* lives in `schema/`; how to read, acknowledge, reclaim and trim it lives here.
"""
