"""What every role shares to be observed: JSON-lines logging and the Prometheus plumbing (no project imports)."""
