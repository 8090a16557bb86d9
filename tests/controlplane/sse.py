"""Reading `GET /v1/events/stream` in the event tests: frames, subscribed streams, the events of a capsule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import typing
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from wrenn_server.controlplane.db.models import TeamApiKey
from wrenn_server.controlplane.ids import Kind, format_id, hash_secret
from wrenn_server.controlplane.services.events import SYSTEM, Event, EventName
from wrenn_server.controlplane.state import ControlPlane

from .harness import Harness, ServerThread

STREAM = "/v1/events/stream"


CONNECTED = b'event: connected\ndata: {"event":"connected","message":"connected"}\n\n'


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@dataclass
class Frame:
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> dict[str, Any]:
        assert self.data is not None, self
        body: dict[str, Any] = json.loads(self.data)
        return body


class Sse:
    """An open event stream, read frame by frame."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp
        self._lines = resp.aiter_lines()

    async def frame(self, timeout: float = 60) -> Frame:
        frame, seen = Frame(), False
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if seen:
                        return frame
                elif line.startswith(":"):
                    frame.comment, seen = line[1:].strip(), True
                elif line.startswith("event:"):
                    frame.event, seen = line[6:].strip(), True
                elif line.startswith("data:"):
                    data = line[5:].lstrip()
                    frame.data, seen = (data if frame.data is None else f"{frame.data}\n{data}"), True
        raise EOFError("the stream ended")

    async def events_of(self, resource_id: str, until: str, timeout: float = 120) -> list[Frame]:
        """Frames about `resource_id` up to and including the first `until` event."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                if frame.data is None:
                    continue
                if frame.json()["resource"]["id"] == resource_id:
                    frames.append(frame)
                    if frame.event == until:
                        return frames


@contextlib.asynccontextmanager
async def open_stream(base_url: str, headers: dict[str, str]) -> AsyncIterator[Sse]:
    """A subscribed stream: its `connected` frame has been read."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=90)) as client,
        client.stream("GET", STREAM, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        stream = Sse(resp)
        first = await stream.frame(10)
        assert (first.event, first.json()) == ("connected", {"event": "connected", "message": "connected"})
        yield stream


async def key_id(harness: Harness, api_key: str) -> str:
    async with harness.sessionmaker() as session:
        key = await session.scalar(select(TeamApiKey).where(TeamApiKey.key_hash == hash_secret(api_key)))
        assert key is not None
        return format_id(Kind.API_KEY, key.id)


def control_plane(server: ServerThread) -> ControlPlane:
    """The running control plane inside a test server (to watch its bus)."""
    return typing.cast(ControlPlane, server.server.config.app.state.control_plane)


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def synthetic(team_id: uuid.UUID, count: int, pad: int = 1200) -> list[Event]:
    """Events of a made-up capsule, `pad` characters each, to fill buffers with."""
    resource = format_id(Kind.SANDBOX, uuid.uuid4())
    return [
        Event(
            EventName.CAPSULE_STATE_CHANGED,
            team_id,
            resource,
            SYSTEM,
            metadata={"from": "running", "to": "running", "n": str(i), "pad": "x" * pad},
        )
        for i in range(count)
    ]


async def create(http: httpx.AsyncClient, headers: dict[str, str], cleanup: list[str]) -> dict[str, Any]:
    resp = await http.post("/v1/capsules", json={}, headers=headers)
    assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
    cleanup.append(resp.json()["id"])
    body: dict[str, Any] = resp.json()
    return body


def bodies_of(frames: list[Frame], team_id: uuid.UUID, wire_id: str, actor: dict[str, str]) -> list[dict[str, Any]]:
    """The frames' bodies, each checked for what every event of one capsule carries: its name (the frame's
    `event:` line too), the team, the capsule as its resource, the actor, an RFC 3339 time, and no error."""
    bodies = [frame.json() for frame in frames]
    assert [frame.event for frame in frames] == [body["event"] for body in bodies]
    for body in bodies:
        assert body["team_id"] == format_id(Kind.TEAM, team_id)
        assert body["resource"] == {"id": wire_id, "type": "sandbox"}
        assert body["actor"] == actor
        assert RFC3339.match(body["timestamp"]), body["timestamp"]
        assert "error" not in body
    return bodies
