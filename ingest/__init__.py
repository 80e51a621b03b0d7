"""The HTTP gateway: validates bids, puts them on `bids:requests`, and answers with the stored bid."""
