"""Capsule and host statuses, and the groups of them the rules care about."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SNAPSHOTTING = "snapshotting"
    RESUMING = "resuming"
    STOPPING = "stopping"
    HIBERNATED = "hibernated"
    STOPPED = "stopped"
    MISSING = "missing"
    ERROR = "error"


class HostStatus(StrEnum):
    PENDING = "pending"
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"
    UNREACHABLE = "unreachable"


# Finished capsules: hidden from the list, destroy is a no-op.
FINAL = frozenset({Status.STOPPED, Status.ERROR})
# Capsules whose row says why they are not running any more (its `error`, the API's `metadata.end_reason`).
ENDED_OR_LOST = FINAL | {Status.MISSING}
# Capsules that hold memory on their host (paused ones live on disk).
HOLDS_MEMORY = frozenset(
    {
        Status.PENDING,
        Status.STARTING,
        Status.RUNNING,
        Status.PAUSING,
        Status.RESUMING,
        Status.SNAPSHOTTING,
        Status.STOPPING,
    }
)
# Capsules that become `missing` when their host stops heartbeating.
LOST_WITH_HOST = frozenset({Status.PENDING, Status.STARTING, Status.RUNNING})
