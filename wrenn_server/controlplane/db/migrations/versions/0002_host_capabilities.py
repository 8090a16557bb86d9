"""Hosts carry their runtime and its measured capabilities, as the agent reports them.

Revision ID: 0002_host_capabilities
Revises: 0001
Create Date: 2026-12-07 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_host_capabilities"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtime", sa.String(), server_default="", nullable=False))
        # Existing rows: nothing reported yet (their next heartbeat fills it in).
        batch_op.add_column(sa.Column("capabilities", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.alter_column("runtime", server_default=None)
        batch_op.alter_column("capabilities", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("capabilities")
        batch_op.drop_column("runtime")
