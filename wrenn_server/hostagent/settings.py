from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """Configuration of one host agent process (environment prefix `WRENN_`)."""

    model_config = SettingsConfigDict(env_prefix="WRENN_", extra="ignore")

    dir: Path = Field(Path("/var/lib/wrenn"), description="Data directory: images, capsules, state.")
    host_listen_addr: str = Field("127.0.0.1:50051", description="Address the agent's gRPC server binds.")
    host_address: str = Field("", description="Address advertised to the control plane (default: listen addr).")
    cp_url: str = Field("", description="Control plane base URL the agent registers with.")
    registration_token: str = Field("", description="One-time token for the first registration.")
    runtime: str = Field("auto", description="auto | gvisor | microvm")
    heartbeat_sec: float = Field(10.0, description="Seconds between heartbeats to the control plane.")
    log_level: str = Field("warning", description="Log level of the agent.")
    checkpoint_after_sec: float = Field(
        10.0,
        ge=0,
        description="A paused capsule is frozen in memory at once (fast resume) and checkpointed to disk, its "
        "memory released, this many seconds later.",
    )

    pool_size: int = Field(
        1,
        ge=0,
        description="Capsules kept restored and idle per template and size (the most recently used two), so "
        "a create returns at once; 0 turns the warm pool off.",
    )
    pool_min_free_mb: int = Field(
        2048, ge=0, description="The warm pool is only refilled while the machine keeps this much memory free."
    )
    disk_reserve_mb: int = Field(
        4096,
        ge=0,
        description="Free disk (MiB) the data directory's filesystem keeps for the host's own data (database, "
        "images): while it has less, new capsules are refused (no capacity); 0 turns the check off.",
    )

    @property
    def advertised_address(self) -> str:
        return self.host_address or self.host_listen_addr
