"""Teams and their API keys (the parts the capsule API and the embedded bootstrap need)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Team, TeamApiKey
from ..ids import hash_secret, key_prefix, new_api_key, new_uuid


def new_slug() -> str:
    return f"{secrets.token_hex(3)}-{secrets.token_hex(3)}"


async def create_team(
    session: AsyncSession, name: str, *, slug: str | None = None, byoc: bool = False
) -> Team:
    team = Team(id=new_uuid(), name=name, slug=slug or new_slug(), is_byoc=byoc)
    session.add(team)
    await session.flush()
    return team


async def add_api_key(
    session: AsyncSession, team_id: uuid.UUID, name: str = "Unnamed API Key", plaintext: str | None = None
) -> tuple[TeamApiKey, str]:
    """Store an API key for the team (a fresh one unless `plaintext` is given); returns it and its text."""
    plaintext = plaintext or new_api_key()
    key = TeamApiKey(
        id=new_uuid(),
        team_id=team_id,
        name=name,
        key_hash=hash_secret(plaintext),
        key_prefix=key_prefix(plaintext),
    )
    session.add(key)
    await session.flush()
    return key, plaintext
