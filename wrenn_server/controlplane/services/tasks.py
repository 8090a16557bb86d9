"""Background tasks that outlive the request that started them, cancelled together at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class TaskTracker:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an error nobody awaited is logged once, not as "never retrieved".
            log.debug("background task %s failed: %s", task.get_name(), task.exception())

    async def close(self, grace: float = 5.0) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def wait_bounded(task: asyncio.Task[T], seconds: float) -> bool:
    """Wait for `task` at most `seconds` without ever cancelling it; True when it finished."""
    if not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), seconds)
        except TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - the caller inspects task.exception()
            pass
    return True


async def wait_until(task: asyncio.Task[T], event: asyncio.Event, seconds: float) -> None:
    """Wait at most `seconds` for `task` to finish or `event` to be set, without ever cancelling `task`
    (the caller inspects it)."""
    setter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, setter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        setter.cancel()
