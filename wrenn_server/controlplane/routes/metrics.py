"""Metrics: one capsule's samples, the team's stats, daily usage (docs/api.md, "Metrics")."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from ..errors import InvalidRequest
from ..schemas.metrics import CapsuleMetrics, CapsuleStats, MetricRange, StatsRange, Usage
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["metrics"])


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"invalid '{name}': use YYYY-MM-DD") from None


@router.get("/stats")
async def team_stats(
    principal: Caller, cp: CP, range: Annotated[StatsRange, Query(description="Default 1h.")] = "1h"
) -> CapsuleStats:
    return await cp.metrics.stats(principal, range)


@router.get("/usage", response_model_by_alias=True)
async def team_usage(
    principal: Caller,
    cp: CP,
    from_: Annotated[
        str | None, Query(alias="from", description="First day, YYYY-MM-DD (default: 29 days before `to`).")
    ] = None,
    to: Annotated[str | None, Query(description="Last day, YYYY-MM-DD (default: today).")] = None,
) -> Usage:
    return await cp.metrics.usage(principal, _day(from_, "from"), _day(to, "to"))


@router.get("/{id}/metrics")
async def capsule_metrics(
    principal: Caller,
    cp: CP,
    sandbox_id: CapsuleId,
    range: Annotated[MetricRange, Query(description="Default 10m.")] = "10m",
) -> CapsuleMetrics:
    return await cp.metrics.capsule(principal, sandbox_id, range)
