"""Metrics: one capsule's samples, the team's stats, daily usage (docs/api.md, "Metrics")."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..errors import InvalidRequest
from ..ids import Kind, format_id
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["metrics"])


class MetricPoint(BaseModel):
    timestamp_unix: int
    cpu_pct: float = Field(description="CPU use in percent of the capsule's vCPUs (0-100).")
    mem_bytes: int
    disk_bytes: int


class CapsuleMetrics(BaseModel):
    sandbox_id: str
    range: str
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
    range: str
    current: Current
    peaks: Peaks = Field(description="Maximum values over the last 30 days.")
    series: Series


class UsagePoint(BaseModel):
    date: str
    cpu_minutes: float
    ram_mb_minutes: float


class Usage(BaseModel):
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    points: list[UsagePoint]


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"invalid '{name}': use YYYY-MM-DD") from None


@router.get("/stats", response_model=CapsuleStats)
async def team_stats(
    principal: Caller,
    cp: CP,
    range: Annotated[str, Query(description="5m, 1h (default), 6h, 24h or 30d.")] = "1h",
) -> dict[str, Any]:
    return await cp.metrics.stats(principal, range)


@router.get("/usage", response_model=Usage, response_model_by_alias=True)
async def team_usage(
    principal: Caller,
    cp: CP,
    from_: Annotated[
        str | None, Query(alias="from", description="First day, YYYY-MM-DD (default: 29 days before `to`).")
    ] = None,
    to: Annotated[str | None, Query(description="Last day, YYYY-MM-DD (default: today).")] = None,
) -> dict[str, Any]:
    return await cp.metrics.usage(principal, _day(from_, "from"), _day(to, "to"))


@router.get("/{id}/metrics", response_model=CapsuleMetrics)
async def capsule_metrics(
    principal: Caller,
    cp: CP,
    sandbox_id: CapsuleId,
    range: Annotated[str, Query(description="5m, 10m (default), 1h, 2h, 6h, 12h or 24h.")] = "10m",
) -> dict[str, Any]:
    points = await cp.metrics.capsule(principal, sandbox_id, range)
    return {"sandbox_id": format_id(Kind.SANDBOX, sandbox_id), "range": range, "points": points}
