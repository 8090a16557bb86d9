"""Team stats and daily usage over HTTP, from samples arranged in the database; and the refusals of the metric
routes. A running capsule's samples come from its host agent (tests/sdk/test_metrics.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from wrenn_server.controlplane.db.models import DailyUsage, SandboxMetricsSnapshot

from .harness import Harness
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
