"""Metrics over HTTP: team stats for every range and daily usage, from samples arranged in the database; a real
capsule's samples for every range while it runs (from its host agent), after it is paused (from the database)
and once it is destroyed (gone from its own route, kept in the team's stats and usage); the refusals."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy import select

from wrenn_server.controlplane.db.models import DailyUsage, SandboxMetricPoint, SandboxMetricsSnapshot
from wrenn_server.controlplane.ids import Kind, parse_id

from .harness import Harness
from .sse import create
from .test_errors_auth import assert_error


async def _samples(harness: Harness, team: uuid.UUID, rows: list[tuple[datetime, int, int, int]]) -> None:
    async with harness.sessionmaker() as session:
        for at, running, vcpus, memory in rows:
            session.add(
                SandboxMetricsSnapshot(
                    team_id=team, sampled_at=at, running_count=running, vcpus_reserved=vcpus, memory_mb_reserved=memory
                )
            )
        await session.commit()


async def test_stats_take_the_max_per_bucket_and_30_day_peaks(http: httpx.AsyncClient, harness: Harness) -> None:
    team, key = await harness.team()
    now = datetime.now(UTC)
    await _samples(
        harness,
        team,
        [
            (now - timedelta(seconds=40), 1, 2, 1024),
            (now - timedelta(seconds=39), 3, 4, 2048),  # same 3 s bucket as the one above, or the next
            (now - timedelta(days=3), 9, 18, 9000),  # outside 5m, inside the 30 day peaks
            (now - timedelta(days=40), 50, 50, 50000),  # outside the peaks
        ],
    )
    resp = await http.get("/v1/capsules/stats", params={"range": "5m"}, headers={"X-API-Key": key})
    answered = datetime.now(UTC)
    assert resp.status_code == 200, resp.text
    stats = resp.json()
    assert stats["range"] == "5m"
    assert stats["current"] == {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0}
    assert stats["peaks"] == {"running_count": 9, "vcpus": 18, "memory_mb": 9000}
    series = stats["series"]
    assert len(series["labels"]) in (100, 101)
    assert max(series["running"]) == 3 and max(series["vcpus"]) == 4 and max(series["memory_mb"]) == 2048
    assert sum(1 for v in series["running"] if v) in (1, 2)
    # The series starts 5 minutes before the server's now (somewhere between our request and its answer),
    # rounded down to its 3 s buckets.
    first = datetime.fromisoformat(series["labels"][0].replace("Z", "+00:00"))
    assert now - timedelta(minutes=5, seconds=3) <= first <= answered - timedelta(minutes=5)
    default = (await http.get("/v1/capsules/stats", headers={"X-API-Key": key})).json()
    assert default["range"] == "1h" and len(default["series"]["labels"]) in (120, 121)


async def test_usage_sums_samples_and_keeps_stored_days(http: httpx.AsyncClient, harness: Harness) -> None:
    team, key = await harness.team()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # 6 samples today (one minute of 2 vCPUs and 1024 MB) and a stored day a week ago.
    await _samples(harness, team, [(today + timedelta(seconds=10 * i), 1, 2, 1024) for i in range(6)])
    async with harness.sessionmaker() as session:
        session.add(DailyUsage(team_id=team, day=today.date() - timedelta(days=7), cpu_minutes=5, ram_mb_minutes=7))
        await session.commit()
    resp = await http.get("/v1/capsules/usage", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.text
    usage = resp.json()
    assert usage["to"] == today.date().isoformat()
    assert usage["from"] == (today.date() - timedelta(days=29)).isoformat()
    by_day = {p["date"]: (p["cpu_minutes"], p["ram_mb_minutes"]) for p in usage["points"]}
    assert len(by_day) == 30
    assert by_day[today.date().isoformat()] == (2.0, 1024.0)
    assert by_day[(today.date() - timedelta(days=7)).isoformat()] == (5.0, 7.0)
    assert by_day[(today.date() - timedelta(days=1)).isoformat()] == (0.0, 0.0)
    one = {"from": "2026-01-02", "to": "2026-01-02"}
    single = (await http.get("/v1/capsules/usage", params=one, headers={"X-API-Key": key})).json()
    assert [p["date"] for p in single["points"]] == ["2026-01-02"]


async def test_bad_input(http: httpx.AsyncClient, harness: Harness) -> None:
    team, key = await harness.team()
    headers = {"X-API-Key": key}
    assert_error(await http.get("/v1/capsules/stats", params={"range": "2d"}, headers=headers), 400, "invalid_request")
    bad_days = [
        {"from": "yesterday"},
        {"from": "2026-02-01", "to": "2026-01-01"},  # backwards
        {"from": "2025-01-01", "to": "2025-12-31"},  # over 92 days
    ]
    for params in bad_days:
        assert_error(await http.get("/v1/capsules/usage", params=params, headers=headers), 400, "invalid_request")
    assert_error(await http.get("/v1/capsules/stats"), 401, "unauthorized")
    stopped = await harness.capsule(team, "stopped")
    message = assert_error(await http.get(f"/v1/capsules/{stopped}/metrics", headers=headers), 404, "not_found")
    assert message == "metrics not available for sandbox in state: stopped"
    running = await harness.capsule(team, "running")
    url = f"/v1/capsules/{running}/metrics"
    assert_error(await http.get(url, params={"range": "3m"}, headers=headers), 400, "invalid_request")
    _, other_key = await harness.team()
    assert_error(await http.get(url, headers={"X-API-Key": other_key}), 404, "not_found")


# --- team stats for every range ---------------------------------------------------------------------------

# docs/api.md, "Metrics": range -> (window, bucket), in seconds.
STATS_RANGES = {"5m": (300, 3), "1h": (3600, 30), "6h": (21600, 180), "24h": (86400, 720), "30d": (2592000, 21600)}


def _parse(label: str) -> datetime:
    assert label.endswith("Z") and len(label) == 20, label  # RFC3339, second precision, UTC
    return datetime.fromisoformat(label.replace("Z", "+00:00"))


async def test_stats_for_every_range(http: httpx.AsyncClient, harness: Harness) -> None:
    team, key = await harness.team()
    now = datetime.now(UTC).replace(microsecond=0)
    ago = [timedelta(seconds=100), timedelta(minutes=30), timedelta(hours=3), timedelta(hours=12), timedelta(days=10)]
    # Sample n (1-based) holds n capsules, n vCPUs and 100·n MB; one more, 40 days old, is in no range.
    samples = [(now - age, n, n, 100 * n) for n, age in enumerate(ago, start=1)]
    await _samples(harness, team, [*samples, (now - timedelta(days=40), 9, 9, 900)])
    for name, (window, bucket) in STATS_RANGES.items():
        asked = datetime.now(UTC)
        resp = await http.get("/v1/capsules/stats", params={"range": name}, headers={"X-API-Key": key})
        answered = datetime.now(UTC)
        assert resp.status_code == 200, resp.text
        stats = resp.json()
        assert set(stats) == {"range", "current", "peaks", "series"}
        assert stats["range"] == name
        assert stats["current"] == {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0}
        assert stats["peaks"] == {"running_count": 5, "vcpus": 5, "memory_mb": 500}  # the last 30 days
        series = stats["series"]
        assert set(series) == {"labels", "running", "vcpus", "memory_mb"}
        labels = [_parse(label) for label in series["labels"]]
        count = len(labels)
        assert count in (window // bucket, window // bucket + 1), (name, count)
        assert len(series["running"]) == len(series["vcpus"]) == len(series["memory_mb"]) == count
        # Buckets follow one another from the start of the window, aligned to the bucket size.
        assert all(int(label.timestamp()) % bucket == 0 for label in labels)
        assert all((b - a).total_seconds() == bucket for a, b in zip(labels, labels[1:], strict=False))
        assert asked - timedelta(seconds=window + bucket) < labels[0] <= answered - timedelta(seconds=window)
        assert labels[-1] <= answered
        # Each sample inside the window is in its bucket (the larger where two share one); nothing else is.
        expected: list[tuple[int, ...]] = [(0, 0, 0)] * count
        for at, running, vcpus, memory in samples:
            if at >= labels[0]:
                i = min(count - 1, int((at - labels[0]).total_seconds() // bucket))
                expected[i] = tuple(max(a, b) for a, b in zip(expected[i], (running, vcpus, memory), strict=True))
        got = list(zip(series["running"], series["vcpus"], series["memory_mb"], strict=True))
        assert got == expected, name
        inside = [n for n, age in enumerate(ago, start=1) if age.total_seconds() < window]
        assert max(series["running"]) == max(inside), name


# --- one real capsule: running, paused, destroyed -------------------------------------------------------------

# docs/api.md, "Metrics": range -> (the agent's ring tier that answers it, how far back it reaches in seconds).
METRIC_RANGES = {
    "5m": ("10m", 300),
    "10m": ("10m", 600),
    "1h": ("2h", 3600),
    "2h": ("2h", 7200),
    "6h": ("24h", 21600),
    "12h": ("24h", 43200),
    "24h": ("24h", 86400),
}
# Seconds a capsule must have run before a tier holds a point: the 10m tier samples every 500 ms, a 2h point
# averages 60 of those, a 24h point 10 of the 2h ones.
FIRST_POINT_AFTER = {"10m": 0.0, "2h": 29.5, "24h": 299.5}
POINT_KEYS = {"timestamp_unix", "cpu_pct", "mem_bytes", "disk_bytes"}
T = TypeVar("T")


async def until(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Fetch until `done` says yes (the timeout only keeps a broken server from hanging the suite)."""
    async with asyncio.timeout(180):
        while not done(value := await fetch()):
            await asyncio.sleep(0.5)
    return value


async def _metrics(http: httpx.AsyncClient, headers: dict[str, str], capsule: str, name: str) -> list[dict[str, Any]]:
    resp = await http.get(f"/v1/capsules/{capsule}/metrics", params={"range": name}, headers=headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["sandbox_id"] == capsule and body["range"] == name and set(body) == {"sandbox_id", "range", "points"}
    points: list[dict[str, Any]] = body["points"]
    return points


def _check_points(points: list[dict[str, Any]], born: float, asked: float, newest: float, span: int) -> None:
    """Well-formed samples of this capsule's life, oldest first: none before it was created (`born`) or after
    `newest`, none older than the range reaches back from when they were `asked` for."""
    stamps = [p["timestamp_unix"] for p in points]
    assert stamps == sorted(stamps)
    for p in points:
        assert set(p) == POINT_KEYS, p
        assert isinstance(p["timestamp_unix"], int) and isinstance(p["mem_bytes"], int), p
        assert math.floor(max(born, asked - span)) <= p["timestamp_unix"] <= newest, (p, born, asked, newest)
        assert 0 <= p["cpu_pct"] <= 100 and p["mem_bytes"] > 0 and p["disk_bytes"] >= 0, p


def _by_second(points: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {p["timestamp_unix"]: p for p in points}  # the last one of each second


async def test_running_capsule_metrics_for_every_range(
    http: httpx.AsyncClient, own_team: tuple[uuid.UUID, dict[str, str]], cleanup: list[str]
) -> None:
    _, headers = own_team
    born = time.time()
    capsule = (await create(http, headers, cleanup))["id"]
    busy = {"cmd": "/bin/sh", "args": ["-c", "head -c 20000000 /dev/urandom | sha256sum"]}
    assert (await http.post(f"/v1/capsules/{capsule}/exec", json=busy, headers=headers)).status_code == 200
    worked = time.time()
    # Wait for a sample taken after the work: the one that measured it.
    points = await until(
        lambda: _metrics(http, headers, capsule, "10m"), lambda ps: bool(ps) and ps[-1]["timestamp_unix"] > worked
    )
    assert any(p["cpu_pct"] > 0 for p in points), points
    for name, (tier, span) in METRIC_RANGES.items():
        asked = time.time()
        points = await _metrics(http, headers, capsule, name)
        _check_points(points, born, asked, time.time(), span)
        if tier == "10m":
            assert points, name  # the sampler fills this tier from the start
        elif asked - born < FIRST_POINT_AFTER[tier]:
            assert points == [], name  # too young for this tier to hold a point
    default = await http.get(f"/v1/capsules/{capsule}/metrics", headers=headers)
    assert default.status_code == 200 and default.json()["range"] == "10m"
    assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204


async def test_metrics_survive_pause_and_destroy(
    harness: Harness, http: httpx.AsyncClient, own_team: tuple[uuid.UUID, dict[str, str]], cleanup: list[str]
) -> None:
    _, headers = own_team
    born = time.time()
    created = await create(http, headers, cleanup)
    capsule, vcpus, memory_mb = created["id"], created["vcpus"], created["memory_mb"]

    async def recent_usage() -> tuple[float, float]:
        """CPU and RAM minutes of yesterday and today (in case the test runs over midnight)."""
        resp = await http.get("/v1/capsules/usage", headers=headers)
        assert resp.status_code == 200, resp.text
        days = resp.json()["points"][-2:]
        return sum(p["cpu_minutes"] for p in days), sum(p["ram_mb_minutes"] for p in days)

    # A few seconds of samples on the host, and one of the control plane's 10 s samples of the team.
    before = await until(lambda: _metrics(http, headers, capsule, "10m"), lambda ps: len(ps) >= 6)
    await until(recent_usage, lambda used: used[0] > 0)

    paused = await http.post(f"/v1/capsules/{capsule}/pause", headers=headers)
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    paused_at = time.time()
    # The host's rings reach the database just after the answer; from then on that is where they are read.
    kept = await until(lambda: _metrics(http, headers, capsule, "10m"), bool)
    _check_points(kept, born, paused_at, paused_at, 600)
    assert len(_by_second(kept)) == len(kept)  # one point per second
    last_before = max(p["timestamp_unix"] for p in before)  # (its second may have had a later sample)
    running = {ts: p for ts, p in _by_second(before).items() if ts < last_before}
    assert running and {ts: p for ts, p in _by_second(kept).items() if ts in running} == running
    assert kept[-1]["timestamp_unix"] >= last_before
    assert await _metrics(http, headers, capsule, "10m") == kept  # nothing is sampled while paused
    for name, (tier, span) in METRIC_RANGES.items():
        asked = time.time()
        points = await _metrics(http, headers, capsule, name)
        _check_points(points, born, asked, paused_at, span)
        if tier == "10m":  # what the 10 minutes kept, as far back as the range reaches
            assert points and points == [p for p in kept if p["timestamp_unix"] >= points[0]["timestamp_unix"]]
        elif paused_at - born < FIRST_POINT_AFTER[tier]:
            assert points == [], name
    stats = (await http.get("/v1/capsules/stats", params={"range": "5m"}, headers=headers)).json()
    half = math.ceil(memory_mb / 2)  # a paused capsule holds half its memory, no vCPU
    assert stats["current"] == {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": half}

    assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204

    async def status() -> str:
        resp = await http.get(f"/v1/capsules/{capsule}", headers=headers)
        assert resp.status_code == 200, resp.text
        value: str = resp.json()["status"]
        return value

    await until(status, lambda s: s == "stopped")
    async with harness.sessionmaker() as session:  # only the 24 h tier outlives the capsule (docs/api.md, "Metrics")
        kept_tiers = await session.scalars(
            select(SandboxMetricPoint.tier).where(SandboxMetricPoint.sandbox_id == parse_id(Kind.SANDBOX, capsule))
        )
        assert set(kept_tiers) <= {"24h"}
    # A destroyed capsule's own samples are no longer served (docs/api.md, "Metrics": 404 for any other state)...
    gone = await http.get(f"/v1/capsules/{capsule}/metrics", params={"range": "10m"}, headers=headers)
    assert assert_error(gone, 404, "not_found") == "metrics not available for sandbox in state: stopped"
    # ...while what the team ran stays in its stats and its usage.
    stats = (await http.get("/v1/capsules/stats", params={"range": "1h"}, headers=headers)).json()
    assert stats["current"] == {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0}
    assert max(stats["series"]["running"]) >= 1 and max(stats["series"]["vcpus"]) >= vcpus
    assert max(stats["series"]["memory_mb"]) >= memory_mb
    assert stats["peaks"] == {"running_count": 1, "vcpus": vcpus, "memory_mb": memory_mb}
    cpu_minutes, ram_mb_minutes = await recent_usage()  # at least one 10 s sample of it running
    assert cpu_minutes >= round(vcpus * 10 / 60, 4) and ram_mb_minutes >= round(memory_mb * 10 / 60, 4)
