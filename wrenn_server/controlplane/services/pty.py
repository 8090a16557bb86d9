"""Keystrokes on their way to a terminal: a bounded queue drained by one writer.

Whatever piles up while one `SendInput` call is in flight goes out together in the next, so a burst of
small frames (a paste, a fast typist) costs a few calls instead of one each, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..errors import WrennError

QUEUE_FRAMES = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024


class InputQueue:
    def __init__(self, send: Callable[[bytes], Awaitable[None]], frames: int = QUEUE_FRAMES) -> None:
        self._send = send
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(frames)
        self._carry: bytes | None = None

    async def put(self, data: bytes) -> None:
        """Waits while the queue is full: a client that types faster than the terminal reads is slowed."""
        if data:
            await self._queue.put(data)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until everything queued so far was handed to the terminal or failed to be."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def _batch(self) -> list[bytes]:
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        parts, size = [first], len(first)
        while not self._queue.empty():
            data = self._queue.get_nowait()
            if size + len(data) > MAX_BATCH_BYTES:
                self._carry = data
                break
            parts.append(data)
            size += len(data)
        return parts

    async def run(self, report: Callable[[str], Awaitable[None]]) -> None:
        """Deliver input until cancelled; a failed call is reported, and the input after it still goes."""
        while True:
            parts = await self._batch()
            try:
                await self._send(b"".join(parts))
            except WrennError as exc:
                await report(f"input not delivered: {exc.message}")
            finally:
                for _ in parts:
                    self._queue.task_done()
