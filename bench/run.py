"""Every benchmark of the platform, one JSON document (`make bench`).

`--quick` (or `WRENN_BENCH_QUICK=1`): a few samples of each, a smoke test that every bench still runs to the
end (scripts/test.sh runs it after the tests). The microVM bench runs where the microVM runtime can
(`wrenn doctor`), and is skipped with the reason in the document elsewhere. A bench that fails is reported on
stderr with its traceback, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrenn_server.hostagent.runtimes import build_runtime

from . import create_latency, exec_latency, interactive, microvm, pause_latency
from .common import IMAGES, QUICK_ENV, emit

BENCHES: dict[str, Callable[[], dict[str, Any]]] = {
    "exec_latency": exec_latency.measure,
    "create_latency": create_latency.measure,
    "interactive": interactive.measure,
    "pause_latency": pause_latency.measure,
    "microvm": microvm.measure,
}


def microvm_unavailable() -> str | None:
    """Why the microVM runtime cannot run here, or None when it can."""
    with tempfile.TemporaryDirectory(prefix="wrenn-bench-probe-", dir="/var/tmp") as root:
        (Path(root) / "images").symlink_to(IMAGES)
        probe = asyncio.run(build_runtime("microvm", Path(root)).probe())
    return None if probe.available else probe.reason


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few samples per figure: a smoke test")
    parser.add_argument("names", nargs="*", metavar="name", help=f"benches to run (default: all): {', '.join(BENCHES)}")
    args = parser.parse_args()
    if unknown := set(args.names) - set(BENCHES):
        parser.error(f"no bench {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    if args.quick:
        os.environ[QUICK_ENV] = "1"
    result: dict[str, Any] = {}
    failed: list[str] = []
    for name in args.names or BENCHES:
        if name == "microvm" and (reason := microvm_unavailable()) is not None:
            result["microvm"] = {"skipped": f"the microVM runtime cannot run here: {reason}"}
            continue
        print(f"bench {name}...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result.update(BENCHES[name]())
        except Exception:
            traceback.print_exc()
            failed.append(name)
        outcome = "failed" if failed and failed[-1] == name else "done"
        print(f"bench {name} {outcome} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    emit(result)
    if failed:
        print(f"failed benches: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
