"""Joining a control plane: one-time registration, persisted credentials, heartbeats."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from .runtimes.base import Runtime

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    pass


def token_hash(token: str) -> str:
    """What the agent keeps of the token the control plane presents on RPCs (a 256-bit random secret, so a
    plain sha256 is enough): a copy of the credentials file cannot call the agent."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Credentials:
    host_id: str
    token: str
    refresh_token: str
    rpc_token_hash: str
    cp_url: str

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        """The saved credentials; a file written before only the RPC token's hash was kept is rewritten."""
        try:
            fields = json.loads(path.read_text())
            legacy = fields.pop("rpc_token", None)
            if legacy is not None:
                fields["rpc_token_hash"] = token_hash(legacy)
            creds = cls(**fields)
        except (OSError, ValueError, TypeError):
            return None
        if legacy is not None:
            try:
                creds.save(path)
            except OSError as exc:
                log.warning("could not rewrite %s without its RPC token: %s", path, exc)
        return creds

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        tmp.replace(path)


def machine_facts(data_dir: Path, runtime: Runtime) -> dict[str, object]:
    """What the control plane places capsules by: the machine's size, and its runtime and what it can do."""
    return {
        "arch": platform.machine(),
        "cpu_cores": os.cpu_count() or 1,
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024),
        "disk_gb": shutil.disk_usage(data_dir).total // (1024**3),
        "runtime": runtime.name,
        "capabilities": runtime.capabilities.to_wire(),
    }


async def register(cp_url: str, token: str, address: str, data_dir: Path, runtime: Runtime) -> Credentials:
    facts = machine_facts(data_dir, runtime)
    try:
        async with httpx.AsyncClient(base_url=cp_url, timeout=30) as http:
            resp = await http.post("/v1/hosts/register", json={"token": token, "address": address, **facts})
    except httpx.HTTPError as exc:
        raise RegistrationError(f"the control plane at {cp_url} did not answer: {exc!r}") from exc
    if resp.status_code != 201:
        raise RegistrationError(f"the control plane refused the registration ({resp.status_code}): {resp.text}")
    body = resp.json()
    return Credentials(
        host_id=body["host"]["id"],
        token=body["token"],
        refresh_token=body["refresh_token"],
        rpc_token_hash=token_hash(body["rpc_token"]),
        cp_url=cp_url,
    )


class Heartbeat:
    """Tells the control plane every few seconds that this host is alive; refreshes its token when told to."""

    def __init__(
        self,
        creds: Credentials,
        path: Path,
        interval: float,
        data_dir: Path,
        runtime: Runtime,
        rotated: Callable[[str], None],
    ) -> None:
        self.creds = creds
        self.rotated = rotated  # told the new RPC token's hash when a refresh replaces the token
        self.path = path
        self.interval = interval
        self.data_dir = data_dir
        self.runtime = runtime

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.creds.cp_url, timeout=10) as http:
            while True:
                try:
                    await self.beat(http)
                except httpx.TransportError as exc:
                    log.warning("heartbeat failed: %s", exc.__class__.__name__)
                await asyncio.sleep(self.interval)

    async def beat(self, http: httpx.AsyncClient) -> None:
        resp = await http.post(
            f"/v1/hosts/{self.creds.host_id}/heartbeat",
            headers={"X-Host-Token": self.creds.token},
            json=machine_facts(self.data_dir, self.runtime),
        )
        if resp.status_code in (401, 403):
            await self.refresh(http)
        elif resp.status_code == 404:
            log.error("the control plane no longer knows host %s; register again", self.creds.host_id)
        elif resp.status_code >= 400:
            log.warning("heartbeat answered %s: %s", resp.status_code, resp.text[:200])

    async def refresh(self, http: httpx.AsyncClient) -> None:
        resp = await http.post("/v1/hosts/auth/refresh", json={"refresh_token": self.creds.refresh_token})
        if resp.status_code != 200:
            log.error("token refresh refused (%s): %s", resp.status_code, resp.text[:200])
            return
        body = resp.json()
        self.creds.token = body["token"]
        self.creds.refresh_token = body["refresh_token"]
        if body.get("rpc_token"):
            self.creds.rpc_token_hash = token_hash(body["rpc_token"])
            self.rotated(self.creds.rpc_token_hash)
        self.creds.save(self.path)
