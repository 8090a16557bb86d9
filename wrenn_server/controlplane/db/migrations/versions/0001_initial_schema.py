"""Initial schema: every table of the control plane, the platform team and the `minimal` template.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:36:07.496882
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ZERO = uuid.UUID(int=0)


def _seed() -> None:
    now = datetime.now(UTC)
    teams = sa.table(
        "teams",
        sa.column("id", sa.Uuid()),
        sa.column("name", sa.String()),
        sa.column("slug", sa.String()),
        sa.column("is_byoc", sa.Boolean()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    templates = sa.table(
        "templates",
        sa.column("id", sa.Uuid()),
        sa.column("name", sa.String()),
        sa.column("type", sa.String()),
        sa.column("vcpus", sa.Integer()),
        sa.column("memory_mb", sa.Integer()),
        sa.column("size_bytes", sa.BigInteger()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("team_id", sa.Uuid()),
        sa.column("default_user", sa.String()),
        sa.column("default_env", sa.JSON()),
        sa.column("metadata", sa.JSON()),
    )
    op.bulk_insert(
        teams, [{"id": ZERO, "name": "Platform", "slug": "platform", "is_byoc": False, "created_at": now}]
    )
    op.bulk_insert(
        templates,
        [
            {
                "id": ZERO,
                "name": "minimal",
                "type": "base",
                "vcpus": 1,
                "memory_mb": 512,
                "size_bytes": 0,
                "created_at": now,
                "team_id": ZERO,
                "default_user": "root",
                "default_env": {},
                "metadata": {},
            }
        ],
    )


def upgrade() -> None:

    op.create_table(
        "audit_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("actor_type", sa.String(), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=True),
        sa.Column("actor_name", sa.Text(), nullable=True),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_logs")),
    )
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.create_index("ix_audit_logs_team_id_created_at", ["team_id", "created_at"], unique=False)

    op.create_table(
        "daily_usage",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("cpu_minutes", sa.Numeric(precision=20, scale=4, asdecimal=False), nullable=False),
        sa.Column("ram_mb_minutes", sa.Numeric(precision=20, scale=4, asdecimal=False), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "day", name=op.f("pk_daily_usage")),
    )
    op.create_table(
        "sandbox_metric_points",
        sa.Column("sandbox_id", sa.Uuid(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_pct", sa.Float(), nullable=False),
        sa.Column("mem_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sandbox_id", "tier", "ts", name=op.f("pk_sandbox_metric_points")),
    )
    op.create_table(
        "sandbox_metrics_snapshots",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("running_count", sa.Integer(), nullable=False),
        sa.Column("vcpus_reserved", sa.Integer(), nullable=False),
        sa.Column("memory_mb_reserved", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_metrics_snapshots")),
    )
    with op.batch_alter_table("sandbox_metrics_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sandbox_metrics_snapshots_team_id_sampled_at", ["team_id", "sampled_at"], unique=False
        )

    op.create_table(
        "teams",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("slug", sa.String(), nullable=False),
        sa.Column("is_byoc", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("slug", name=op.f("uq_teams_slug")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("availability_zone", sa.String(), nullable=False),
        sa.Column("arch", sa.String(), nullable=False),
        sa.Column("cpu_cores", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.BigInteger(), nullable=False),
        sa.Column("disk_gb", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cert_fingerprint", sa.String(), nullable=False),
        sa.Column("cert_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rpc_token", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_hosts_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_hosts_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hosts_team_id"), ["team_id"], unique=False)

    op.create_table(
        "team_api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("key_prefix", sa.String(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_team_api_keys_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_team_api_keys_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_team_api_keys_key_hash")),
    )
    with op.batch_alter_table("team_api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_team_api_keys_team_id"), ["team_id"], unique=False)

    op.create_table(
        "templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("default_user", sa.String(), nullable=False),
        sa.Column("default_env", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_templates_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_templates_team_id_name")),
    )
    op.create_table(
        "users_teams",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_users_teams_team_id_teams"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_users_teams_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_users_teams")),
    )
    op.create_table(
        "host_refresh_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("host_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_refresh_tokens_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_host_refresh_tokens_token_hash")),
    )
    with op.batch_alter_table("host_refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_refresh_tokens_host_id"), ["host_id"], unique=False)

    op.create_table(
        "host_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("host_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_host_tokens_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_tokens_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_host_tokens_token_hash")),
    )
    with op.batch_alter_table("host_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_tokens_host_id"), ["host_id"], unique=False)

    op.create_table(
        "sandboxes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("host_id", sa.Uuid(), nullable=True),
        sa.Column("template", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("timeout_sec", sa.Integer(), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), nullable=False),
        sa.Column("guest_ip", sa.String(), nullable=False),
        sa.Column("host_ip", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("template_id", sa.Uuid(), nullable=True),
        sa.Column("template_team_id", sa.Uuid(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_sandboxes_host_id_hosts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_sandboxes_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandboxes")),
    )
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sandboxes_host_id"), ["host_id"], unique=False)
        batch_op.create_index("ix_sandboxes_team_id_status", ["team_id", "status"], unique=False)

    _seed()


def downgrade() -> None:

    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_team_id_status")
        batch_op.drop_index(batch_op.f("ix_sandboxes_host_id"))

    op.drop_table("sandboxes")
    with op.batch_alter_table("host_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_tokens_host_id"))

    op.drop_table("host_tokens")
    with op.batch_alter_table("host_refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_refresh_tokens_host_id"))

    op.drop_table("host_refresh_tokens")
    op.drop_table("users_teams")
    op.drop_table("templates")
    with op.batch_alter_table("team_api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_team_api_keys_team_id"))

    op.drop_table("team_api_keys")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hosts_team_id"))

    op.drop_table("hosts")
    op.drop_table("users")
    op.drop_table("teams")
    with op.batch_alter_table("sandbox_metrics_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_sandbox_metrics_snapshots_team_id_sampled_at")

    op.drop_table("sandbox_metrics_snapshots")
    op.drop_table("sandbox_metric_points")
    op.drop_table("daily_usage")
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_logs_team_id_created_at")

    op.drop_table("audit_logs")
