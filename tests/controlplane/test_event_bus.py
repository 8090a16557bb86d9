"""The event bus behind the stream: in-process and through Redis, shared by two control planes."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import redis.asyncio as aioredis
from wrenn.models import SSEEvent

from tests.redis_server import RedisServer, redis_server
from wrenn_server.controlplane.db.types import utcnow
from wrenn_server.controlplane.ids import Kind, format_id, parse_id
from wrenn_server.controlplane.services.events import (
    CHANNEL,
    Actor,
    Event,
    EventName,
    InProcessBus,
    Outcome,
    RedisBus,
)

from .agent import Agent, agent_team
from .harness import Harness, ServerThread, settings_for
from .sse import (
    create,
    open_stream,
)

__all__ = ["redis_server"]


def _event(team_id: uuid.UUID, n: int = 0) -> Event:
    return Event(
        EventName.CAPSULE_CREATE,
        team_id,
        format_id(Kind.SANDBOX, uuid.uuid4()),
        Actor("api_key", format_id(Kind.API_KEY, uuid.uuid4())),
        timestamp=utcnow().replace(microsecond=0),  # what the wire keeps
        outcome=Outcome.SUCCESS,
        metadata={"n": str(n)},
        sandbox={"id": "cl-x", "status": "running", "vcpus": 1},
    )


async def test_in_process_bus_drops_a_full_subscriber() -> None:
    bus = InProcessBus()
    team = uuid.uuid4()
    slow, fast = bus.subscribe(), bus.subscribe()
    received = []
    for n in range(100):
        bus.publish(_event(team, n))  # never waits
        received.append(await fast.next(timeout=1))
    numbers = [event.metadata["n"] for event in received if event is not None and event.metadata is not None]
    assert numbers == [str(n) for n in range(100)]
    assert slow.dropped and bus.subscribers == 1
    assert [event async for event in slow] == []  # it ended at once, its backlog discarded
    fast.close()
    assert bus.subscribers == 0
    await bus.close()
    with bus.subscribe() as late:
        assert [event async for event in late] == []


def test_event_payload_round_trips() -> None:
    event = _event(uuid.uuid4())
    assert Event.from_payload(json.loads(event.data)) == event
    payload = event.payload()
    assert payload["team_id"] == format_id(Kind.TEAM, event.team_id)
    assert parse_id(Kind.TEAM, payload["team_id"]) == event.team_id
    assert SSEEvent.model_validate_json(event.data).event == "capsule.create"


async def test_redis_bus_shares_events(redis_server: RedisServer) -> None:
    one, two = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await one.start()
    await two.start()
    try:
        team = uuid.uuid4()
        with one.subscribe() as here, two.subscribe() as there:
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                await client.publish(CHANNEL, b"not json")  # ignored, with a warning
                await client.publish(CHANNEL, json.dumps({"origin": "x", "event": {"event": "nope"}}))
            finally:
                await client.aclose()
            sent = [_event(team, n) for n in range(3)]
            for event in sent:
                one.publish(event)
            assert [await there.next(timeout=5) for _ in sent] == sent
            assert [await here.next(timeout=5) for _ in sent] == sent
            assert await here.next(timeout=0.5) is None  # not a second time through Redis
    finally:
        await one.close()
        await two.close()


async def test_redis_bus_drops_a_full_subscriber_of_another_process(redis_server: RedisServer) -> None:
    """Events that arrive through Redis never wait for a slow reader either: it is dropped, the others go on."""
    one, two = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await one.start()
    await two.start()
    try:
        team = uuid.uuid4()
        slow, fast = two.subscribe(), two.subscribe()
        received = []
        for n in range(100):
            one.publish(_event(team, n))
            received.append(await fast.next(timeout=5))
        numbers = [event.metadata["n"] for event in received if event is not None and event.metadata is not None]
        assert numbers == [str(n) for n in range(100)]
        assert slow.dropped and two.subscribers == 1
        assert [event async for event in slow] == []
        fast.close()
    finally:
        await one.close()
        await two.close()


async def test_two_control_planes_share_events(
    database_url: str,
    redis_server: RedisServer,
    harness: Harness,
    http: httpx.AsyncClient,
    agent: Agent,
    cleanup: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A create through control plane A is seen by a subscriber of control plane B."""
    servers = [
        ServerThread(settings_for(tmp_path_factory.mktemp("cp-redis"), database_url, redis_url=redis_server.url))
        for _ in range(2)
    ]
    for thread in servers:
        await asyncio.to_thread(thread.start)
    a, b = servers
    try:
        team_id, headers = await agent_team(harness, agent)
        async with (
            open_stream(b.base_url, headers) as on_b,
            httpx.AsyncClient(base_url=a.base_url, timeout=60) as via_a,
        ):
            capsule = await create(via_a, headers, cleanup)
            assert (await via_a.delete(f"/v1/capsules/{capsule['id']}", headers=headers)).status_code == 204
            frames = await on_b.events_of(capsule["id"], until="capsule.destroy")
        names = [frame.event for frame in frames]
        assert names[0] == "capsule.state.changed" and names[1] == "capsule.create" and names[-1] == "capsule.destroy"
        created = frames[1].json()
        assert created["sandbox"]["status"] == "running" and created["team_id"] == format_id(Kind.TEAM, team_id)
        got = (await http.get(f"/v1/capsules/{capsule['id']}", headers=headers)).json()
        got.pop("disk_used_mb", None)  # measured on the host for GET of one capsule only
        assert frames[-1].json()["sandbox"] == got
    finally:
        for thread in servers:
            await asyncio.to_thread(thread.stop)
