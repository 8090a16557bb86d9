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
from . import __version__
from .app import App
from .http import start_server
from .metrics import Metrics
from .ports import PortForwarder
from .processes import ProcessTable
from .spawn import CHILD_OOM_SCORE, SPAWNER, oom_score, set_oom_score
from .users import Defaults


async def serve(host: str, port: int, spawner: str, forward_address: str | None, oom_shielded: bool) -> None:
    loop = asyncio.get_running_loop()
    processes = ProcessTable(spawner, CHILD_OOM_SCORE if oom_shielded else None)
    processes.install(loop)
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
        forwarder.close()
        server.close()
        processes.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="envd", description="Wrenn guest agent")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--spawner", default=SPAWNER, help="path of the wrenn-spawn helper (spawner.c)")
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
            runner.run(serve(args.host, args.port, args.spawner, forward_address, oom_score() is not None))


if __name__ == "__main__":
    main()
