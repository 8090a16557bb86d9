"""Shared pieces of the benchmarks: a platform to measure, statistics, JSON output."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.cleanup import purge_data_dir
from tests.stack import Stack, free_port
from wrenn_server.hostagent.layout import CapsuleDir, TemplateDir
from wrenn_server.hostagent.network import Network, Slot
from wrenn_server.hostagent.runtimes.base import SandboxSpec
from wrenn_server.hostagent.runtimes.gvisor import _HIDE_NET_SYSCTL, _mount_overlay, _oci_spec

if TYPE_CHECKING:
    from wrenn import Capsule

IMAGES = Path(os.environ.get("WRENN_TEST_IMAGES", "/var/lib/wrenn/images"))
QUICK_ENV = "WRENN_BENCH_QUICK"


def quick() -> bool:
    """`WRENN_BENCH_QUICK=1` (`python -m bench.run --quick`): a few samples of each figure, a smoke test of
    every bench (the tests run it) rather than a measurement."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def samples(full: int, few: int = 3) -> int:
    """How many samples (or warm-up rounds) to take: `full`, or `few` in quick mode."""
    return few if quick() else full


def prepared_checkpoint(runtime: str, size: str = "1x512x5120") -> Path:
    """The newest prepared checkpoint of the minimal template at `size` that `runtime` made (`snapshot.json`
    says which: the gVisor and microVM ones of one size sit side by side, and neither can restore the other's)."""
    found = [
        about.parent
        for about in (IMAGES / "minimal" / "current").resolve().glob(f"prepared/{size}-*/snapshot.json")
        if json.loads(about.read_text()).get("runtime", "gvisor") == runtime and (about.parent / "checkpoint").exists()
    ]
    if not found:
        raise RuntimeError(
            f"no {runtime} prepared checkpoint of the minimal template at {size}: the platform "
            f"makes one after the first capsule of that size on {runtime}"
        )
    return max(found, key=lambda path: (path / "checkpoint").stat().st_mtime)


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(p95, 3),
        "min_ms": round(ordered[0], 3),
    }


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def pause_resume_cycles(
    capsule: Capsule, n: int, checkpointed: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float], list[float]]:
    """2n+1 pauses through the SDK, each resumed at once (a thaw) or 1.5 s later, when the platform (run with
    WRENN_CHECKPOINT_AFTER_SEC=0.5) has checkpointed it (a restore; `checkpointed` runs then). Answers the
    pauses, the resumes of recently paused capsules and the resumes from checkpoints, in ms."""
    pause, recent, cold = [], [], []
    for i in range(2 * n + 1):
        start = time.perf_counter()
        capsule.pause()
        pause.append(ms_since(start))
        if i % 2:
            time.sleep(1.5)
            checkpointed()
        start = time.perf_counter()
        capsule.resume()
        (cold if i % 2 else recent).append(ms_since(start))
    return pause, recent, cold


def creates_from_a_snapshot(capsule: Capsule, n: int) -> list[float]:
    """Snapshot the capsule into a template, create (and destroy) `n` capsules of it through the SDK, delete it."""
    from wrenn import Capsule

    template = capsule.create_snapshot().name
    out = []
    for _ in range(n):
        start = time.perf_counter()
        child = Capsule(template=template)
        out.append(ms_since(start))
        child.destroy()
        child._client.close()
    capsule._client.snapshots.delete(template)
    return out


def timed(fn: Callable[[], Any], n: int, warmup: int | None = None) -> list[float]:
    warmup = samples(20, 2) if warmup is None else warmup
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
    """`wrenn up` on SQLite in a private data dir sharing the built images; the SDK configured for it. On
    gVisor unless `WRENN_RUNTIME` says otherwise: the raw figures beside the platform's are runsc's."""
    env.setdefault("WRENN_RUNTIME", "gvisor")
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


def raw_network(root: Path) -> Network:
    """Network slots for raw sandboxes under `root`. Owned by `root`'s path: an agent that starts meanwhile
    (the tests' run alongside) takes a slot whose owner is no existing directory for a leftover and tears it
    down, and `purge_data_dir` of the bench's data directory releases them."""
    root.mkdir(parents=True, exist_ok=True)
    return Network(str(root.resolve()))


@dataclass
class RawSandbox:
    """A runsc sandbox of the minimal template in a network slot of its own, set up as the agent sets one up,
    then driven by hand: the raw runtime figures the platform's are printed beside."""

    root: Path
    network: Network
    slot: Slot
    sandbox_id: str
    workdir: Path
    rootfs: Path

    @classmethod
    def prepare(cls, root: Path, network: Network, template: Path | None = None) -> RawSandbox:
        """On the minimal image, or on `template` (a snapshot template or prepared checkpoint) when given."""
        template = template or (IMAGES / "minimal" / "current").resolve()
        slot = network.allocate()
        asyncio.run(network.setup(slot))
        sandbox_id = f"bench-{uuid.uuid4().hex[:12]}"
        workdir = root / sandbox_id
        spec = SandboxSpec(sandbox_id, template, workdir, 1, 512, 5120, slot.guest)
        rootfs = asyncio.run(_mount_overlay(TemplateDir(template).layers(), CapsuleDir(workdir)))
        (workdir / "bundle").mkdir()
        (workdir / "bundle" / "config.json").write_text(json.dumps(_oci_spec(spec, rootfs)))
        return cls(root, network, slot, sandbox_id, workdir, rootfs)

    def runsc(self, *args: str) -> list[str]:
        return ["runsc", "--root", str(self.root / "runsc"), *args]

    def boot(self, *command: str) -> None:
        """`runsc run` or `restore` as the agent starts them (see runtimes/gvisor.py)."""
        flags = ["--platform", "ptrace", "--network", "sandbox", "--overlay2", "none"]
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _HIDE_NET_SYSCTL, "sh"]
        with (self.workdir / "console.log").open("ab") as log:
            subprocess.run(
                [*argv, *self.runsc(*flags, *command)], check=True, stdout=log, stderr=log, start_new_session=True
            )

    def run(self) -> None:
        self.boot("run", "--detach", "--bundle", str(self.workdir / "bundle"), self.sandbox_id)

    def restore(self, checkpoint: Path) -> None:
        """`runsc restore`; call `readdress` first (the guest's address must be back on its interface)."""
        bundle = str(self.workdir / "bundle")
        self.boot("restore", "--detach", "--image-path", str(checkpoint), "--bundle", bundle, self.sandbox_id)

    def readdress(self) -> None:
        asyncio.run(self.network.readdress(self.slot))

    def remove(self) -> None:
        subprocess.run(self.runsc("delete", "--force", self.sandbox_id), check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(self.rootfs)], check=False)
        asyncio.run(self.network.teardown(self.slot))


def emit(result: dict[str, Any]) -> None:
    if quick():
        result = {"quick": "a smoke run: a few samples per figure, not a measurement", **result}
    print(json.dumps(result, indent=2))


def tail_summary(samples_ms: list[float]) -> dict[str, float]:
    """`summary` with the p99 beside it: the soak and chaos figures are about the tail."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0}
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {**summary(ordered), "p99_ms": round(p99, 3), "max_ms": round(ordered[-1], 3)}


# The counter is renamed into place: a reader never finds it half-written.
RESIDENT = "i=0; while :; do i=$((i+1)); echo $i > /root/.r; mv /root/.r /root/.resident; sleep 0.2; done"


def start_resident(capsule: Capsule) -> int:
    """A process that lives as long as its capsule, counting in /root/.resident; answers its pid."""
    return capsule.commands.run(f"sh -c '{RESIDENT}'", background=True, tag="resident").pid


def resident_problem(capsule: Capsule, pid: int) -> str | None:
    """Why the resident process no longer counts (not listed, its counter stuck), or None while it does."""
    listed = [p.pid for p in capsule.commands.list()]
    first = capsule.commands.run("cat /root/.resident").stdout.strip()
    time.sleep(0.5)
    second = capsule.commands.run("cat /root/.resident").stdout.strip()
    if pid not in listed:
        return f"process {pid} is not listed (listed: {listed}); its counter went {first!r} -> {second!r}"
    if not (first.isdigit() and second.isdigit() and int(second) > int(first)):
        return f"process {pid} is listed, but its counter went {first!r} -> {second!r}"
    return None


def lost_files(capsule: Capsule, folder: str, expected: dict[str, str]) -> list[str]:
    """The files of `expected` (name → sha256) that are missing from `folder` or differ (one exec, reading
    only those files)."""
    listed = capsule.commands.run(f"cd {folder} && sha256sum {' '.join(expected)} 2>/dev/null", timeout=300)
    found = dict(reversed(line.split("  ", 1)) for line in listed.stdout.splitlines() if "  " in line)
    return sorted(name for name, digest in expected.items() if found.get(name) != digest)
