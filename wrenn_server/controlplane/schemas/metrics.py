"""Metrics (docs/api.md, "Metrics"): one capsule's samples, the team's stats, daily usage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# A capsule's ranges, and the team stats' (their windows and buckets are the service's business).
MetricRange = Literal["5m", "10m", "1h", "2h", "6h", "12h", "24h"]
StatsRange = Literal["5m", "1h", "6h", "24h", "30d"]


class MetricPoint(BaseModel):
    timestamp_unix: int
    cpu_pct: float = Field(description="CPU use in percent of the capsule's vCPUs (0-100).")
    mem_bytes: int
    disk_bytes: int


class CapsuleMetrics(BaseModel):
    sandbox_id: str
    range: MetricRange
    points: list[MetricPoint]


class Current(BaseModel):
    running_count: int
    vcpus_reserved: int
    memory_mb_reserved: int


class Peaks(BaseModel):
    running_count: int
    vcpus: int
    memory_mb: int


class Series(BaseModel):
    labels: list[str]
    running: list[int]
    vcpus: list[int]
    memory_mb: list[int]


class CapsuleStats(BaseModel):
    range: StatsRange
    current: Current
    peaks: Peaks = Field(description="Maximum values over the last 30 days.")
    series: Series


class UsagePoint(BaseModel):
    date: str
    cpu_minutes: float
    ram_mb_minutes: float


class Usage(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    points: list[UsagePoint]
