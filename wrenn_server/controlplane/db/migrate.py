"""Run Alembic programmatically on the settings' database (upgrade at startup, checks in tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..settings import ControlPlaneSettings
from .engine import make_engine
from .models import Base

_INI = Path(__file__).with_name("alembic.ini")
# Serialises concurrent control planes migrating one PostgreSQL database.
_PG_LOCK_KEY = 0x5752454E4E  # "WRENN"


def alembic_config(settings: ControlPlaneSettings) -> Config:
    config = Config(str(_INI))
    config.attributes["settings"] = settings
    return config


async def _with_connection(settings: ControlPlaneSettings, action: Callable[[Connection], Any]) -> Any:
    engine = make_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            return await conn.run_sync(action)
    finally:
        await engine.dispose()


def _command(settings: ControlPlaneSettings, fn: Callable[[Config], None]) -> Callable[[Connection], None]:
    def action(conn: Connection) -> None:
        config = alembic_config(settings)
        config.attributes["connection"] = conn
        fn(config)

    return action


async def migrate(settings: ControlPlaneSettings) -> None:
    """Upgrade the database to the newest revision."""
    await _with_connection(settings, _command(settings, lambda cfg: command.upgrade(cfg, "head")))


async def downgrade(settings: ControlPlaneSettings, revision: str = "-1") -> None:
    await _with_connection(settings, _command(settings, lambda cfg: command.downgrade(cfg, revision)))


async def current_revision(settings: ControlPlaneSettings) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    result: str | None = await _with_connection(settings, read)
    return result


async def pending_changes(settings: ControlPlaneSettings) -> list[Any]:
    """What autogenerate would still emit: empty when the migrations match the models."""

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    result: list[Any] = await _with_connection(settings, diff)
    return result
