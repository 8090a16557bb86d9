"""Processes started in a capsule: the listing, and the signals a process may be sent."""

from __future__ import annotations

from pydantic import BaseModel

from wrenn_server.proto.limits import DEFAULT_SIGNAL, SIGNALS, Signal

__all__ = ["DEFAULT_SIGNAL", "SIGNALS", "ProcessEntry", "ProcessList", "Signal"]


class ProcessEntry(BaseModel):
    pid: int
    tag: str | None = None
    cmd: str
    args: list[str] | None = None


class ProcessList(BaseModel):
    processes: list[ProcessEntry]
