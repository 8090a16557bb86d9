"""Shared pieces of the benchmarks: a platform to measure, statistics, JSON output."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.cleanup import purge_data_dir
from tests.stack import Stack, free_port

IMAGES = Path("/var/lib/wrenn/images")


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(p95, 3),
        "min_ms": round(ordered[0], 3),
    }


def timed(fn: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


@contextmanager
def platform(**env: str) -> Iterator[Stack]:
    """`wrenn up` on SQLite in a private data dir sharing the built images; the SDK configured for it."""
    if not (IMAGES / "minimal" / "current").exists():
        sys.exit("no base image: run `make bootstrap` first")
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-", dir="/var/tmp"))
    (root / "images").symlink_to(IMAGES)
    stack = Stack(root, f"sqlite+aiosqlite:///{root / 'wrenn.db'}", free_port(), free_port(), extra_env=env)
    stack.start()
    saved = dict(os.environ)
    os.environ.update(stack.config())
    try:
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.destroy_all()
        stack.stop()
        purge_data_dir(root)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))
