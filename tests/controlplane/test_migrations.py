"""Migrations on SQLite and PostgreSQL: upgrade, no pending autogenerate diff, downgrade, upgrade again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from wrenn_server.controlplane.db.engine import make_engine, make_sessionmaker
from wrenn_server.controlplane.db.migrate import current_revision, downgrade, migrate, pending_changes
from wrenn_server.controlplane.db.models import Team, Template
from wrenn_server.controlplane.ids import ZERO_UUID

from .harness import settings_for
from .pg import PostgresServer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database("wrenn_migrate")


async def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_check_downgrade_upgrade(fresh_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fresh_url)
    await migrate(settings)
    head = await current_revision(settings)
    assert head is not None
    assert await pending_changes(settings) == []
    assert {"teams", "sandboxes", "hosts", "templates", "daily_usage"} <= await tables(settings.database_url)

    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            platform = await session.get(Team, ZERO_UUID)
            assert platform is not None and (platform.name, platform.slug) == ("Platform", "platform")
            minimal = await session.scalar(select(Template).where(Template.name == "minimal"))
            assert minimal is not None and minimal.id == ZERO_UUID and minimal.team_id == ZERO_UUID
            assert (minimal.type, minimal.vcpus, minimal.memory_mb) == ("base", 1, 512)
            assert minimal.created_at.tzinfo is not None
    finally:
        await engine.dispose()

    await downgrade(settings, "-1")
    assert await current_revision(settings) != head
    await migrate(settings)
    assert await current_revision(settings) == head
    assert await pending_changes(settings) == []
    await migrate(settings)  # idempotent


async def test_full_downgrade_leaves_nothing(fresh_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fresh_url)
    await migrate(settings)
    await downgrade(settings, "base")
    assert await tables(settings.database_url) <= {"alembic_version"}
