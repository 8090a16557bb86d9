"""Where a capsule's guest is on its host: the runtime's name for it and its directory.

A capsule taken from the warm pool keeps the name its guest was started under (`wp-…`), so tests that reach
past the API (runsc, checkpoint files) look the name up in the agent's record instead of assuming the id.
"""

from __future__ import annotations

import json
from pathlib import Path


def guest(data_dir: Path, sandbox_id: str) -> tuple[str, Path]:
    for state in (data_dir / "sandboxes").glob("*/state.json"):
        if json.loads(state.read_text()).get("sandbox_id") == sandbox_id:
            return state.parent.name, state.parent
    raise LookupError(f"no record of {sandbox_id} under {data_dir}")
