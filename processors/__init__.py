"""The stream processors: Faust agents fed by Redis consumer groups (pricing, audit)."""
