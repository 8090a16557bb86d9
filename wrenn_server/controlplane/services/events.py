"""Lifecycle events for `GET /v1/events/stream` (docs/api.md, "Events"), and the bus that carries them.

The bus has one small interface, `EventBus`: `publish(event)` never blocks and never fails, `subscribe()`
answers an async iterator of events, `close()` ends every subscription. `InProcessBus` serves one control
plane; `RedisBus` (when `REDIS_URL` is set) also shares events with the other control planes over the
pub/sub channel `wrenn:sse`. Each subscriber has a buffer of `SUBSCRIBER_BUFFER` events: one that falls
that far behind is dropped (its iteration ends at once) instead of holding up anybody else.

`CapsuleEvents` is what the lifecycle code calls: it adds the capsule, as the API renders it, to each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..db.engine import SessionMaker
from ..db.models import Sandbox
from ..db.types import utcnow
from ..ids import Kind, format_id, parse_id
from ..schemas.common import rfc3339
from .auth import Principal
from .status import Status

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 32
CHANNEL = "wrenn:sse"
OUTBOX = 1024  # events waiting for Redis; beyond that they are shared with this process only
FLUSH_SEC = 2.0  # how long close() lets queued events reach Redis


class EventName(StrEnum):
    """`SSEEvent.event` of the SDK (wrenn 0.3.0), value for value."""

    CONNECTED = "connected"
    CAPSULE_CREATE = "capsule.create"
    CAPSULE_PAUSE = "capsule.pause"
    CAPSULE_RESUME = "capsule.resume"
    CAPSULE_DESTROY = "capsule.destroy"
    CAPSULE_STATE_CHANGED = "capsule.state.changed"
    TEMPLATE_SNAPSHOT_CREATE = "template.snapshot.create"
    TEMPLATE_SNAPSHOT_DELETE = "template.snapshot.delete"
    HOST_UP = "host.up"
    HOST_DOWN = "host.down"


class Outcome(StrEnum):
    SUCCESS = "success"
    ERROR = "error"


ActorType = Literal["user", "api_key", "system"]


@dataclass(frozen=True)
class Actor:
    """Who caused the event: the caller of the request behind it, or the system (reconciler, TTL...)."""

    type: ActorType
    id: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        kind = Kind.USER if principal.kind == "user" else Kind.API_KEY
        return cls(principal.kind, format_id(kind, principal.actor_id))


SYSTEM = Actor("system")


@dataclass(frozen=True)
class Event:
    """One event; `payload()` is the JSON of its `data:` line."""

    name: EventName
    team_id: uuid.UUID
    resource_id: str
    actor: Actor
    timestamp: datetime = field(default_factory=utcnow)
    outcome: Outcome | None = None
    resource_type: str = "sandbox"
    metadata: Mapping[str, str] | None = None
    error: str | None = None
    sandbox: Mapping[str, Any] | None = None

    def visible_to(self, principal: Principal) -> bool:
        """Whether `principal` may see it: its own team's events, and every team's for admins."""
        return principal.is_admin or self.team_id == principal.team_id

    def payload(self) -> dict[str, Any]:
        actor = {"type": self.actor.type, "id": self.actor.id, "name": self.actor.name}
        body: dict[str, Any] = {
            "event": self.name.value,
            "outcome": self.outcome.value if self.outcome else None,
            "timestamp": rfc3339(self.timestamp),
            "team_id": format_id(Kind.TEAM, self.team_id),
            "actor": {key: value for key, value in actor.items() if value is not None},
            "resource": {"id": self.resource_id, "type": self.resource_type},
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "error": self.error,
            "sandbox": dict(self.sandbox) if self.sandbox is not None else None,
        }
        return {key: value for key, value in body.items() if value is not None}

    @cached_property
    def data(self) -> str:
        """`payload()` as one line of JSON, encoded once however many subscribers read it."""
        return json.dumps(self.payload(), separators=(",", ":"))

    @classmethod
    def from_payload(cls, body: Mapping[str, Any]) -> Event:
        """The inverse of `payload()` (events from other control planes); ValueError/KeyError/TypeError when
        `body` is not one."""
        actor, resource = body["actor"], body["resource"]
        outcome = body.get("outcome")
        return cls(
            name=EventName(body["event"]),
            team_id=parse_id(Kind.TEAM, body["team_id"]),
            resource_id=str(resource["id"]),
            resource_type=str(resource["type"]),
            actor=Actor(actor["type"], actor.get("id"), actor.get("name")),
            timestamp=datetime.fromisoformat(body["timestamp"]),
            outcome=Outcome(outcome) if outcome is not None else None,
            metadata=body.get("metadata"),
            error=body.get("error"),
            sandbox=body.get("sandbox"),
        )


class Subscription:
    """One subscriber's bounded buffer: the bus offers events, the reader takes them until it ends.

    It ends when the reader closes it, when the bus closes, or when the bus drops it for being full.
    """

    def __init__(self, size: int, remove: Callable[[Subscription], None]) -> None:
        self._size = size
        self._remove = remove
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()  # bounded by offer(); None ends it
        self._ended = False
        self._finished = False
        self.dropped = False

    def offer(self, event: Event) -> bool:
        """Queue `event` without waiting; False when the subscriber was full (it is dropped) or has ended."""
        if self._ended:
            return False
        if self._queue.qsize() >= self._size:
            self.dropped = True
            self.end()
            return False
        self._queue.put_nowait(event)
        return True

    def end(self) -> None:
        """Stop at once: what is still buffered is discarded."""
        if self._ended:
            return
        self._ended = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when `timeout` seconds pass first; StopAsyncIteration once it has ended."""
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is None:
            self._finished = True
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        assert event is not None  # no timeout: only an event or the end
        return event

    def close(self) -> None:
        self._remove(self)
        self.end()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class EventBus(Protocol):
    def publish(self, event: Event) -> None: ...

    def subscribe(self) -> Subscription: ...

    @property
    def subscribers(self) -> int: ...

    async def close(self) -> None: ...


class InProcessBus:
    """Events of this control-plane process only."""

    def __init__(self, buffer: int = SUBSCRIBER_BUFFER) -> None:
        self._buffer = buffer
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def publish(self, event: Event) -> None:
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        for subscription in list(self._subscriptions):
            if not subscription.offer(event):
                self._subscriptions.discard(subscription)
                if subscription.dropped:
                    log.info("dropped an event subscriber that fell %d events behind", self._buffer)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._buffer, self._subscriptions.discard)
        if self._closed:
            subscription.end()
        else:
            self._subscriptions.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()


class RedisBus(InProcessBus):
    """Delivers to this process at once and shares every event through Redis pub/sub; events that other
    processes publish arrive through Redis. Redis being away costs only the sharing: both loops retry."""

    def __init__(self, url: str, buffer: int = SUBSCRIBER_BUFFER) -> None:
        super().__init__(buffer)
        self._redis = aioredis.Redis.from_url(url)
        self._origin = uuid.uuid4().hex
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX)
        self._listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait: float = 5.0) -> None:
        """Start the loops; waits (at most `wait` seconds) until events from other processes arrive."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="events-redis-listen"),
            loop.create_task(self._send(), name="events-redis-send"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait)
        if not self._listening.is_set():
            log.warning("events: Redis is not reachable yet; other control planes' events will follow")

    def publish(self, event: Event) -> None:
        self._deliver(event)
        if self._closed:
            return
        try:
            self._outbox.put_nowait(json.dumps({"origin": self._origin, "event": event.payload()}))
        except asyncio.QueueFull:
            log.warning("events: %d events wait for Redis; %s stays in this process", OUTBOX, event.name)

    async def _send(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._redis.publish(CHANNEL, message)
            except (RedisError, OSError) as exc:
                log.warning("events: an event did not reach Redis: %s", exc)
            finally:
                self._outbox.task_done()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._listening.set()
                    delay = 0.5
                    async for message in pubsub.listen():
                        self._receive(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("events: Redis subscription lost (%s); retrying in %.1f s", exc, delay)
            self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _receive(self, data: bytes) -> None:
        try:
            wire = json.loads(data)
            if wire["origin"] == self._origin:
                return  # delivered here when it was published
            event = Event.from_payload(wire["event"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("events: ignoring a malformed message on %s: %r", CHANNEL, exc)
            return
        self._deliver(event)

    async def close(self) -> None:
        await super().close()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), FLUSH_SEC)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()


async def open_bus(redis_url: str) -> EventBus:
    """The bus for this process: shared through Redis when a URL is configured."""
    if not redis_url:
        return InProcessBus()
    bus = RedisBus(redis_url)
    await bus.start()
    return bus


Render = Callable[[Sandbox], Mapping[str, Any]]


class CapsuleEvents:
    """Publishes capsule events, each carrying the capsule as `render` (the API's view) shows it just after
    the change. Never raises: an event that cannot be built is logged and skipped."""

    def __init__(self, bus: EventBus, sessionmaker: SessionMaker, render: Render) -> None:
        self.bus = bus
        self._sessionmaker = sessionmaker
        self._render = render

    async def state_changed(
        self, sandbox_id: uuid.UUID, old: Status, new: Status, actor: Actor, reason: str | None = None
    ) -> None:
        """`reason`: why, for a capsule that ended or was lost (docs/lifecycle.md); it is also the event's
        `error` when the capsule failed."""
        metadata = {"from": old.value, "to": new.value}
        if reason:
            metadata["reason"] = reason
        error = reason if reason and new == Status.ERROR else None
        await self._publish(EventName.CAPSULE_STATE_CHANGED, sandbox_id, actor, metadata=metadata, error=error)

    async def finished(
        self, name: EventName, sandbox_id: uuid.UUID, actor: Actor, error: str | None = None
    ) -> None:
        """An action event (`capsule.create`, `capsule.destroy`...): outcome `error` when `error` is given."""
        outcome = Outcome.ERROR if error is not None else Outcome.SUCCESS
        await self._publish(name, sandbox_id, actor, outcome=outcome, error=error)

    async def template(self, name: EventName, principal: Principal, template_name: str) -> None:
        """A template event (`template.snapshot.create` / `.delete`) for the caller's team."""
        self.bus.publish(
            Event(
                name=name,
                team_id=principal.team_id,
                resource_id=template_name,
                actor=Actor.of(principal),
                outcome=Outcome.SUCCESS,
                resource_type="template",
                metadata={"name": template_name},
            )
        )

    async def _publish(
        self,
        name: EventName,
        sandbox_id: uuid.UUID,
        actor: Actor,
        *,
        outcome: Outcome | None = None,
        metadata: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        try:
            async with self._sessionmaker() as session:
                row = await session.get(Sandbox, sandbox_id)
            if row is None:
                return
            event = Event(
                name=name,
                team_id=row.team_id,
                resource_id=format_id(Kind.SANDBOX, sandbox_id),
                actor=actor,
                outcome=outcome,
                metadata=metadata,
                error=error,
                sandbox=self._render(row),
            )
        except Exception:  # noqa: BLE001 - an event must never fail the lifecycle step that emits it
            log.exception("event %s of %s not published", name, format_id(Kind.SANDBOX, sandbox_id))
            return
        self.bus.publish(event)
