"""`python3 -m wrenn_server.envd`: serve the envd protocol until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import selectors
import signal
import sys
from contextlib import suppress

from ..proto.envd import PORT as DEFAULT_PORT
from ..proto.envd import default_pids_max
from . import __version__
from .app import App
from .containment import MemoryWatcher, UserCgroup, setup_user_cgroup
from .http import start_server
from .metrics import Metrics
from .ports import PortForwarder
from .processes import ProcessTable
from .spawn import CHILD_OOM_SCORE, SPAWNER, oom_score, set_oom_score
from .users import Defaults


def _user_cgroup(pids_max: int | None) -> UserCgroup | None:
    """The cgroup for the processes envd starts, limited to `pids_max` tasks (by default as many as the guest's
    size allows); without one (no cgroup filesystem, no privilege) envd still works, only without the limit."""
    try:
        with open("/proc/meminfo", "rb") as f:
            total = int(f.readline().split()[1]) * 1024
        return setup_user_cgroup(pids_max or default_pids_max(total >> 20), total)
    except (OSError, ValueError, IndexError) as exc:
        logging.getLogger("envd").warning("no task limit for the capsule's processes: %s", exc)
        return None


async def serve(
    host: str,
    port: int,
    spawner: str,
    forward_address: str | None,
    oom_shielded: bool,
    contain: bool,
    pids_max: int | None,
) -> None:
    loop = asyncio.get_running_loop()
    cgroup = _user_cgroup(pids_max) if contain and pids_max != 0 else None
    processes = ProcessTable(spawner, CHILD_OOM_SCORE if oom_shielded else None, cgroup)
    processes.install(loop)
    watcher = (
        MemoryWatcher(processes.spared, processes.oom_killed, processes.session_killed, cgroup) if contain else None
    )
    watching = asyncio.create_task(watcher.run()) if watcher is not None else None
    forwarder = PortForwarder(forward_address, {DEFAULT_PORT, port})
    try:
        server = await start_server(App(Defaults(), processes, Metrics(), forwarder), host, port)
    except OSError as exc:
        raise SystemExit(f"envd: {exc.strerror}") from None
    forwarding = asyncio.create_task(forwarder.run())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        forwarding.cancel()
        if watching is not None and watcher is not None:
            watching.cancel()
            watcher.close()
        forwarder.close()
        server.close()
        processes.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="envd", description="Wrenn guest agent")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--spawner", default=SPAWNER, help="path of the wrenn-spawn helper (spawner.c)")
    # Only in a guest (wrenn-init passes it): envd run anywhere else must not mount cgroups or kill processes.
    parser.add_argument(
        "--contain", action="store_true", help="task limit and memory watcher for the processes envd starts"
    )
    parser.add_argument(
        "--pids-max",
        type=int,
        default=int(os.environ["WRENN_PIDS_MAX"]) if os.environ.get("WRENN_PIDS_MAX") else None,
        help="tasks the capsule's processes may hold together (default: by the guest's size; 0: no limit)",
    )
    parser.add_argument("--version", action="version", version=f"envd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="envd: %(levelname)s %(message)s", stream=sys.stderr)
    # Without the privilege (or /proc) envd still works, just not protected from the OOM killer.
    set_oom_score(-1000)
    # Only tests set this: they cannot bind the host's default-route address, so they forward to another one.
    forward_address = os.environ.get("WRENN_ENVD_FORWARD_ADDR") or None
    with suppress(KeyboardInterrupt):
        # poll, not epoll: gVisor (runsc 20221219) cannot checkpoint a TCP socket that sits in an epoll set,
        # and pausing a capsule is a checkpoint. A poll registers its waiters only while it waits.
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.PollSelector())) as runner:
            shielded, contain = oom_score() is not None, args.contain
            runner.run(serve(args.host, args.port, args.spawner, forward_address, shielded, contain, args.pids_max))


if __name__ == "__main__":
    main()
