"""A running guest made into a template: its network connections closed, then its state and files saved.

Shared by snapshots of capsules (`templates.py`) and by prepared checkpoints of templates (the warm pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..proto.envd import EndEvent, Mode, OutputEvent, ProcessRef, StartEvent, StartRequest
from .envd_client import EnvdClient
from .errors import AgentError
from .layout import CapsuleDir, TemplateDir
from .network import Network, Slot
from .runtimes.base import Runtime
from .tcpreset import Connection

log = logging.getLogger(__name__)

QUIESCE_CHECKS, QUIESCE_WAIT = 5, 0.02
_LISTEN = """
import socket, sys
held = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind(("0.0.0.0", int(port)))
        s.listen()
        held.append(s)
    except OSError:
        s.close()
print("ready", flush=True)
sys.stdin.read()
"""


async def quiesce(runtime: Runtime, envd: EnvdClient, network: Network, slot: Slot, cut_open: bool) -> list[str]:
    """End every TCP connection of the guest's a checkpoint would trip over (envd's clients, port relays, ours,
    the guest's own, TIME_WAIT included); `cut_open`: open ones too, as a VM's snapshot copy starts without
    them (a pause keeps them, and the capsule stays frozen in memory instead). Answers those left, which would
    make a checkpoint fail (and kill the guest). A runtime that checkpoints connections has none in its way."""
    await envd.prepare_checkpoint()
    envd.reset()
    if runtime.capabilities.checkpoint_keeps_connections:
        return []
    kept, failed = await _end_connections(network, slot, cut_open)
    if failed and not kept:
        # A TIME_WAIT endpoint gives way only to a SYN that a listener on its port takes: the guest's side of an
        # outbound connection, or of one to a listener gone since (envd's port relays are closed by now), has
        # none. A helper in the guest listens on those ports while the router ends them again.
        ends = [c for c, _ in failed]
        try:
            await _with_listeners(envd, sorted({c[2] for c in ends}), lambda: network.end_tcp_connections(slot, ends))
        except AgentError as exc:  # what is left is answered below, and the caller turns forwarding on again
            log.warning("could not lend the guest listeners to end its connections: %s", exc.message)
        await envd.prepare_checkpoint()  # our calls to envd were new connections: end them too
        envd.reset()
        kept, failed = await _end_connections(network, slot, cut_open)
    return [f"{state} {peer}:{peer_port} -> port {port}" for (peer, peer_port, port), state in [*kept, *failed]]


async def _end_connections(
    network: Network, slot: Slot, cut_open: bool
) -> tuple[list[tuple[Connection, str]], list[tuple[Connection, str]]]:
    """End the guest's connections (open ones too when `cut_open`); answers those kept open and those that
    could not be ended."""
    kept: list[tuple[Connection, str]] = []
    failed: list[tuple[Connection, str]] = []
    for _ in range(QUIESCE_CHECKS):  # resets of envd's connections just sent may not have crossed the router
        tracked = await network.tracked_connections(slot)
        kept = [(c, state) for c, state in tracked if state == "ESTABLISHED" and not cut_open]
        ending = {c: state for c, state in tracked if state != "ESTABLISHED" or cut_open}
        failed = [(c, ending[c]) for c in await network.end_tcp_connections(slot, list(ending))]
        if not kept:
            return kept, failed
        await asyncio.sleep(QUIESCE_WAIT)
    return kept, failed


async def _with_listeners(envd: EnvdClient, ports: list[int], work: Callable[[], Awaitable[object]]) -> None:
    """Do `work` while a process in the guest listens on `ports` (gVisor lets SO_REUSEADDR and SO_REUSEPORT bind
    the port of a TIME_WAIT endpoint, an ephemeral one too; a port a listener holds is skipped); it ends when
    its standard input closes."""
    req = StartRequest("/usr/bin/python3", Mode.STREAM, ["-I", "-c", _LISTEN, *map(str, ports)], stdin=True)
    ref: ProcessRef | None = None
    async for event in envd.stream(req):
        if isinstance(event, StartEvent):
            ref = ProcessRef(event.pid)
        elif isinstance(event, OutputEvent) and b"ready" in event.data and ref is not None:
            await work()
            await envd.close_stdin(ref)
        elif isinstance(event, EndEvent):
            return


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
