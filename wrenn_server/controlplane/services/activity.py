"""Capsule activity (`last_active_at`) kept in memory and written in batches.

The timestamp is for display only, and writing it on every exec would put a database commit on the hottest
path of the API; a flush every couple of seconds keeps it current enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime

from sqlalchemy import update

from ..db.engine import SessionMaker
from ..db.models import Sandbox
from ..db.types import utcnow

log = logging.getLogger(__name__)


class ActivityTracker:
    def __init__(self, sessionmaker: SessionMaker, interval: float = 2.0) -> None:
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._pending: dict[uuid.UUID, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def mark(self, sandbox_id: uuid.UUID) -> None:
        self._pending[sandbox_id] = utcnow()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("could not record capsule activity")

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        async with self._sessionmaker() as session:
            for sandbox_id, at in pending.items():
                stmt = update(Sandbox).where(Sandbox.id == sandbox_id).values(last_active_at=at)
                await session.execute(stmt)
            await session.commit()
