"""Template lookup by name: the caller's own team first, then the platform team."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Template
from ..errors import InvalidRequest, NotFound
from ..ids import ZERO_UUID

SAFE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
DEFAULT_TEMPLATE = "minimal"


def check_safe_name(name: str, what: str = "template name") -> str:
    if not SAFE_NAME.fullmatch(name):
        raise InvalidRequest(f"invalid {what}: must match {SAFE_NAME.pattern}")
    return name


async def resolve_template(session: AsyncSession, team_id: uuid.UUID, name: str) -> Template:
    check_safe_name(name)
    rows = (
        await session.scalars(
            select(Template).where(Template.name == name, Template.team_id.in_([team_id, ZERO_UUID]))
        )
    ).all()
    if not rows:
        raise NotFound("template not found")
    own = [row for row in rows if row.team_id == team_id]
    return own[0] if own else rows[0]
