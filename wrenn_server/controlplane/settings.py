"""Settings of the control-plane process, built once by the entry point and passed down."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Turn `postgres://` / `postgresql://` URLs into the asyncpg dialect SQLAlchemy needs.

    libpq's `sslmode` query parameter becomes asyncpg's `ssl`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return url
    query = [("ssl" if key == "sslmode" else key, value) for key, value in parse_qsl(parts.query)]
    return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), parts.fragment))


class ControlPlaneSettings(BaseSettings):
    """Configuration of one control-plane process (environment prefix `WRENN_`)."""

    model_config = SettingsConfigDict(env_prefix="WRENN_", extra="ignore", populate_by_name=True)

    dir: Path = Field(Path("/var/lib/wrenn"), description="Data directory (SQLite database, secrets).")
    database_url: str = Field(
        "",
        validation_alias=AliasChoices("WRENN_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default SQLite in the data directory. postgres:// URLs are accepted.",
    )
    listen: str = Field(
        "127.0.0.1:8080",
        validation_alias=AliasChoices("WRENN_CP_LISTEN_ADDR", "WRENN_LISTEN"),
        description="host:port the HTTP server binds.",
    )
    jwt_secret: str = Field(
        "",
        validation_alias=AliasChoices("WRENN_JWT_SECRET", "JWT_SECRET"),
        description="HS256 secret for user and host JWTs; generated into <dir>/jwt-secret when unset.",
    )
    redis_url: str = Field(
        "",
        validation_alias=AliasChoices("WRENN_REDIS_URL", "REDIS_URL"),
        description="Redis URL: control planes sharing one database share their events through it.",
    )
    sse_keepalive_sec: float = Field(
        30.0, gt=0, description="Seconds of silence after which /v1/events/stream sends a keepalive comment."
    )
    pty_ping_sec: float = Field(
        30.0, gt=0, description="Seconds between the `ping` control frames of the terminal WebSocket."
    )
    proxy_domain: str = Field("", description="Domain of the subdomain proxy `{port}-{id}.{domain}`.")
    proxy_auth: Literal["optional", "required"] = Field(
        "optional",
        description="Port proxy credentials: `optional` (the reference's default; a key sent must be the "
        "capsule team's) or `required`.",
    )
    max_upload_mb: int = Field(100, ge=1, description="Size limit of /files/write uploads, in MiB.")
    max_json_kb: int = Field(1024, ge=1, description="Size limit of JSON request bodies, in KiB.")
    log_level: str = Field("info", description="Log level of the control plane.")
    reconcile_interval_sec: float = Field(15.0, gt=0, description="Seconds between reconciler passes.")
    host_stale_sec: float = Field(90.0, gt=0, description="Heartbeat age after which a host is unreachable.")
    create_wait_sec: float = Field(30.0, ge=0, description="How long POST /v1/capsules waits for `running`.")
    transition_grace_sec: float = Field(
        300.0,
        ge=0,
        description="A pause, resume or destroy left half-way by a control plane process that went away is settled "
        "from its host after this long (another process may still be at it). `wrenn up`, the only control "
        "plane of its database, settles them at once.",
    )

    retention_hours: float = Field(
        24.0,
        ge=0,
        description="How long the disk of a capsule that ended in `error` is kept on its host (its files readable, "
        "its capsule resumable from them), before the reconciler collects it.",
    )

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value.strip())

    @model_validator(mode="after")
    def _default_url(self) -> ControlPlaneSettings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.dir / 'wrenn.db'}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_json_bytes(self) -> int:
        return self.max_json_kb * 1024

    def private_dir(self) -> Path:
        """The data directory, made for root alone (its secrets, its SQLite database)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        return self.dir

    def resolve_jwt_secret(self) -> str:
        """The configured secret, else the one persisted in `<dir>/jwt-secret` (created on first use)."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.dir / "jwt-secret"
        if path.exists():
            existing = path.read_text().strip()
            if existing:
                return existing
        self.dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        return secret
