"""Embedded mode (`wrenn up`): an admin API key and the local host's registration."""

from __future__ import annotations

from sqlalchemy import select

from ..db.engine import SessionMaker
from ..db.models import Host, Team, TeamApiKey
from ..ids import hash_secret, is_api_key_format
from .auth import ADMIN_TEAM_SLUG
from .hosts import create_host, issue_registration_token
from .status import HostStatus
from .teams import add_api_key, create_team


async def ensure_admin_key(sessionmaker: SessionMaker, plaintext: str | None) -> str:
    """Make sure the "Admin" team exists and holds the given API key; return the key's plaintext.

    A well-formed key (`wrn_` + 32 hex) not yet stored is stored as given, so a key saved by the CLI
    survives a fresh database; a missing or malformed one is replaced by a newly generated key.
    """
    async with sessionmaker() as session:
        team = await session.scalar(select(Team).where(Team.slug == ADMIN_TEAM_SLUG))
        if team is None:
            team = await create_team(session, "Admin", slug=ADMIN_TEAM_SLUG)
        if plaintext is not None and is_api_key_format(plaintext):
            existing = await session.scalar(
                select(TeamApiKey).where(TeamApiKey.key_hash == hash_secret(plaintext))
            )
            if existing is not None:
                await session.commit()
                return plaintext
            _, key = await add_api_key(session, team.id, "Admin key", plaintext)
        else:
            _, key = await add_api_key(session, team.id, "Admin key")
        await session.commit()
        return key


async def local_host_registration(sessionmaker: SessionMaker, address: str) -> str | None:
    """A one-time registration token for the local agent at `address`, or None if it is registered.

    A host at that address that never registered (still `pending`) gets a fresh token.
    """
    async with sessionmaker() as session:
        hosts = (await session.scalars(select(Host).where(Host.address == address))).all()
        if any(host.status != HostStatus.PENDING.value for host in hosts):
            return None
        if hosts:
            token = await issue_registration_token(session, hosts[0].id)
        else:
            _, token = await create_host(session, type="regular", address=address)
        await session.commit()
        return token
