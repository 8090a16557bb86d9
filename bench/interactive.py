"""Interactive paths through the SDK: first byte of an exec stream, PTY keystroke echo, and the port proxy
(latency and throughput) beside the same request sent straight to the capsule's address."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from wrenn import Capsule

from tests.webapp import PATH, SOURCE

from .common import emit, platform, samples, summary

PORT = 8000


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}: {response.text[:300]}")


def first_stream_byte(capsule: Capsule) -> float:
    start = time.perf_counter()
    for event in capsule.commands.stream("echo x"):
        if getattr(event, "type", "") == "stdout" or type(event).__name__ == "StreamStdoutEvent":
            elapsed = (time.perf_counter() - start) * 1000
            break
    else:
        raise RuntimeError("the stream ended without output")
    for _ in capsule.commands.stream("true"):
        pass
    return elapsed


def pty_echo(capsule: Capsule, n: int) -> list[float]:
    out: list[float] = []
    warmup = samples(20, 2)
    with capsule.pty(cmd="/bin/cat") as term:
        for i in range(n + warmup):
            key = bytes([97 + i % 26])
            start = time.perf_counter()
            term.write(key)
            seen = b""
            while key not in seen:
                event = next(term)
                seen += event.data or b""
            if i >= warmup:
                out.append((time.perf_counter() - start) * 1000)
        term.kill()
    return out


def interleaved(client: httpx.Client, first: str, second: str, n: int) -> tuple[list[float], list[float]]:
    """Both URLs in turns, so a drift of the machine's speed falls on both alike."""
    taken: tuple[list[float], list[float]] = ([], [])
    warmup = samples(20, 2)
    for i in range(n + warmup):
        for url, out in ((first, taken[0]), (second, taken[1])):
            start = time.perf_counter()
            _ok(client.get(url))
            if i >= warmup:
                out.append((time.perf_counter() - start) * 1000)
    return taken


def throughput(client: httpx.Client, url: str, size: int) -> float:
    best = 0.0
    for _ in range(samples(5, 1)):
        start = time.perf_counter()
        got = len(client.get(f"{url}/bytes/{size}").content)
        best = max(best, got / (time.perf_counter() - start) / 1e6)
    return round(best, 1)


def measure(n: int | None = None) -> dict[str, Any]:
    n = n or samples(100, 5)
    with platform(), Capsule() as capsule:
        streams = [first_stream_byte(capsule) for _ in range(samples(max(20, n // 3), 3))]
        echo = pty_echo(capsule, n)
        capsule.files.write(PATH, SOURCE)
        capsule.commands.run(f"python3 {PATH} {PORT}", background=True)
        proxied_url = capsule.get_url(PORT)
        with httpx.Client(timeout=30) as client:
            info = client.get(
                f"{os.environ['WRENN_BASE_URL']}/v1/capsules/{capsule.capsule_id}",
                headers={"X-API-Key": os.environ["WRENN_API_KEY"]},
            ).json()
            direct_url = f"http://{info['host_ip']}:{PORT}"
            deadline = time.monotonic() + 30
            while client.get(f"{proxied_url}/ready").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            proxied, direct = interleaved(client, f"{proxied_url}/small", f"{direct_url}/small", 3 * n)
            size = 32 << 20
            proxied_mbps, direct_mbps = throughput(client, proxied_url, size), throughput(client, direct_url, size)
    p50 = summary(proxied)["p50_ms"] / summary(direct)["p50_ms"]
    return {
        "exec_stream_first_stdout": summary(streams),
        "pty_keystroke_echo": {**summary(echo), "target": "p50 <= 5 ms"},
        "proxy_http_get": {
            "through_proxy": summary(proxied),
            "raw_capsule_address": summary(direct),
            "p50_ratio": round(p50, 2),
            "throughput_mb_s": {"through_proxy": proxied_mbps, "raw_capsule_address": direct_mbps},
            "target": "overhead <= 1.5x",
        },
    }


if __name__ == "__main__":
    emit(measure())
