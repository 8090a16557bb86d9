"""Alembic environment: URL from ControlPlaneSettings, metadata from the models.

Programmatic callers (db.migrate) hand over an open connection in `config.attributes["connection"]`;
the alembic CLI gets an engine built from the settings instead.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from wrenn_server.controlplane.db.engine import make_engine
from wrenn_server.controlplane.db.models import Base
from wrenn_server.controlplane.settings import ControlPlaneSettings

config = context.config
target_metadata = Base.metadata


def _settings() -> ControlPlaneSettings:
    given = config.attributes.get("settings")
    return given if isinstance(given, ControlPlaneSettings) else ControlPlaneSettings()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_engine() -> None:
    engine = make_engine(_settings().database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(url=_settings().database_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif isinstance(config.attributes.get("connection"), Connection):
    _run(config.attributes["connection"])
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(_run_with_engine())
