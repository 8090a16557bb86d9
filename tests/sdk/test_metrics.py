"""Metrics through the SDK: a capsule's samples for every range, the team's stats and daily usage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wrenn import Capsule, WrennClient
    from wrenn.models import MetricPoint


@pytest.fixture(scope="module")
def client() -> Iterator[WrennClient]:
    from wrenn import WrennClient

    with WrennClient() as c:
        yield c


def test_capsule_metrics_for_every_range(client: WrennClient, capsule: Capsule) -> None:
    """The host samples a capsule every 500 ms (the 10m tier); 60 samples make one 30 s average (the 2h tier,
    answering 1h and 2h) and 10 of those one 5 min average (the 24h tier, answering 6h, 12h and 24h)."""
    capsule.commands.run("head -c 20000000 /dev/urandom | sha256sum")  # some CPU and disk to see

    def points(name: str) -> list[MetricPoint]:
        answer = client.capsules.metrics(capsule.capsule_id, name)
        assert answer.sandbox_id == capsule.capsule_id and answer.range == name
        return answer.points or []

    deadline = time.monotonic() + 120
    while len(fine := points("10m")) < 60:  # younger than 10 min: all of its samples
        assert time.monotonic() < deadline, f"{len(fine)} samples after 120 s"
        time.sleep(1)
    assert all(p.mem_bytes and p.mem_bytes > 0 for p in fine)
    assert all(p.cpu_pct is not None and 0 <= p.cpu_pct <= 100 for p in fine)
    stamps = [p.timestamp_unix or 0 for p in fine]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 30
    assert points("5m")[: len(fine)] == fine  # younger than 5 min too: the same samples, and the newer ones

    coarse = {name: points(name) for name in ("1h", "2h", "6h", "12h", "24h")}
    after = points("10m")
    assert after[: len(fine)] == fine and len(after) < 600
    for name in ("1h", "2h"):
        assert len(fine) // 60 <= len(coarse[name]) <= len(after) // 60, name
        first = coarse[name][0]  # the average of the first 60 samples, stamped with the last of them
        sixty = after[:60]
        assert first.timestamp_unix == sixty[-1].timestamp_unix
        assert first.cpu_pct == round(sum(p.cpu_pct or 0 for p in sixty) / 60, 2)
        assert first.mem_bytes == sum(p.mem_bytes or 0 for p in sixty) // 60
        assert first.disk_bytes == sum(p.disk_bytes or 0 for p in sixty) // 60
    assert coarse["2h"][: len(coarse["1h"])] == coarse["1h"]  # one tier: the same points, the newer ones after
    for name in ("6h", "12h", "24h"):  # fewer than 600 samples so far: no 5 min average yet
        assert coarse[name] == [], name


def test_bad_range_is_400(client: WrennClient, capsule: Capsule) -> None:
    from wrenn.exceptions import WrennError

    with pytest.raises(WrennError) as bad:
        client.capsules.metrics(capsule.capsule_id, "3m")
    assert "range" in str(bad.value)


def test_team_stats_show_the_running_capsule(client: WrennClient, capsule: Capsule) -> None:
    stats = client.capsules.stats("5m")
    assert stats.current and (stats.current.running_count or 0) >= 1
    assert (stats.current.vcpus_reserved or 0) >= 1 and (stats.current.memory_mb_reserved or 0) >= 512
    assert stats.peaks and (stats.peaks.running_count or 0) >= stats.current.running_count
    series = stats.series
    assert series and series.labels and len(series.labels) in (100, 101)
    assert len(series.running or []) == len(series.vcpus or []) == len(series.memory_mb or []) == len(series.labels)
    assert (series.running or [0])[-1] >= 1


def test_daily_usage_counts_today(client: WrennClient, capsule: Capsule) -> None:
    deadline = time.monotonic() + 30
    while True:
        usage = client.capsules.usage()
        points = usage.points or []
        assert len(points) == 30 and points[-1].date == date.today()
        if (points[-1].cpu_minutes or 0) > 0:
            break
        assert time.monotonic() < deadline, "today's usage stayed empty (the sampler runs every 10 s)"
        time.sleep(1)
    assert (points[-1].ram_mb_minutes or 0) >= round(512 * 10 / 60, 2)  # one 10 s sample of 512 MB
    week = client.capsules.usage(date.today() - timedelta(days=6), date.today())
    assert len(week.points or []) == 7 and week.from_ == date.today() - timedelta(days=6)


def test_destroyed_capsule_has_no_metrics(client: WrennClient) -> None:
    from wrenn import Capsule
    from wrenn.exceptions import WrennNotFoundError

    with Capsule() as box:
        box.destroy()
        with pytest.raises(WrennNotFoundError):
            client.capsules.metrics(box.capsule_id, "10m")
