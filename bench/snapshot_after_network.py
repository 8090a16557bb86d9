"""A snapshot right after the capsule served requests through the port proxy (a web app on its address, one on
its loopback relayed by envd), beside one of a capsule that used no network:
what ending the guest's connections before the checkpoint adds (docs/containment.md, "Network and snapshots")."""

from __future__ import annotations

import time

import httpx
from wrenn import Capsule

from .common import emit, ms_since, platform, samples, summary

APPS = "python3 -m http.server 8001 --bind 0.0.0.0", "python3 -m http.server 8002 --bind 127.0.0.1"


def _serve(capsule: Capsule) -> None:
    for app in APPS:
        capsule.commands.run(app, background=True)
    for port in (8001, 8002):
        _until_ok(capsule.get_url(port))


def _until_ok(url: str) -> None:
    """The app answers (after a snapshot, envd's relay of a loopback port is back within its 1 s scan)."""
    deadline = time.monotonic() + 30
    while (status := httpx.get(url).status_code) != 200:
        assert time.monotonic() < deadline, f"{url} answers {status}"
        time.sleep(0.1)


def _snapshot(capsule: Capsule) -> float:
    start = time.perf_counter()
    template = capsule.create_snapshot().name
    took = ms_since(start)
    capsule._client.snapshots.delete(template)
    return took


def main() -> None:
    n = samples(10)
    out: dict[str, list[float]] = {"idle": [], "after_network": []}
    with platform():
        with Capsule(memory_mb=256) as capsule:
            for _ in range(n):
                out["idle"].append(_snapshot(capsule))
        with Capsule(memory_mb=256) as capsule:
            for i in range(n):
                if i == 0:
                    _serve(capsule)
                else:
                    for port in (8001, 8002):
                        _until_ok(capsule.get_url(port))
                out["after_network"].append(_snapshot(capsule))
    emit({"snapshot_ms": {name: summary(values) for name, values in out.items()}})


if __name__ == "__main__":
    main()
