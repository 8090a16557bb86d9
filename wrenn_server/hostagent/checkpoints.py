"""A running guest made into a template: its network connections closed, then its state and files saved.

Shared by snapshots of capsules (`templates.py`) and by prepared checkpoints of templates (the warm pool).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .envd_client import EnvdClient
from .layout import CapsuleDir, TemplateDir
from .network import Network, Slot
from .runtimes.base import Runtime

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


async def save_template(
    runtime: Runtime, name: str, capsule: CapsuleDir, staging: Path, about: dict[str, object]
) -> None:
    """Into the new template directory `staging`: the guest's state (its checkpoint; the guest stops), its files
    (layered over the template `about["base"]`) and the `snapshot.json` saying so."""
    template = TemplateDir(staging)
    staging.mkdir(parents=True)
    await runtime.freeze(name)
    await runtime.checkpoint(name, template.checkpoint_dir.path)
    await runtime.save_files(capsule.path, staging)
    template.write_about({**about, "runtime": runtime.name})
