"""A running guest made into a template: its network connections closed, then its state and files saved.

Shared by snapshots of capsules (the manager) and by prepared checkpoints of templates (the warm pool).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from .envd_client import EnvdClient
from .network import Network, Slot
from .runtimes.base import SNAPSHOT_FILE, Runtime

QUIESCE_CHECKS, QUIESCE_WAIT = 5, 0.02


async def quiesce(runtime: Runtime, envd: EnvdClient, network: Network, slot: Slot) -> list[str]:
    """Close every TCP connection to the guest a checkpoint would trip over (envd's clients, port relays,
    ours); answers the live TCP states left, which make a checkpoint fail (and kill the guest). A runtime
    that checkpoints connections has none that stand in its way."""
    await envd.prepare_checkpoint()
    envd.reset()
    if runtime.capabilities.checkpoint_keeps_connections:
        return []
    states = await network.open_tcp_states(slot)
    for _ in range(QUIESCE_CHECKS):  # the resets just sent may not have crossed the router yet
        if not states:
            break
        await asyncio.sleep(QUIESCE_WAIT)
        states = await network.open_tcp_states(slot)
    return states


async def save_template(runtime: Runtime, name: str, workdir: Path, staging: Path, about: dict[str, Any]) -> None:
    """Into the new directory `staging`: the guest's state (`checkpoint/`; the guest stops), its files
    (`upper/` or `disk.qcow2`, layered over the template `about["base"]`) and `snapshot.json` saying so."""
    staging.mkdir(parents=True)
    await runtime.freeze(name)
    await runtime.pause(name, staging / "checkpoint")
    await runtime.save_files(workdir, staging)
    (staging / SNAPSHOT_FILE).write_text(json.dumps({**about, "runtime": runtime.name}))
