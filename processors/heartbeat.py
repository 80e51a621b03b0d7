"""Where an agent's heartbeat file lives: shared by the workers (which touch it) and `bidengine probe` (which
reads its age), so this module imports nothing heavy (the probe runs every few seconds in a pod)."""

from __future__ import annotations

import os
import tempfile


def heartbeat_path(role: str) -> str:
    """The heartbeat file of `role` (`pricing-agent`, `audit-agent`) in the temporary directory (`TMPDIR`)."""
    return os.path.join(tempfile.gettempdir(), f"bidengine-{role}.alive")
