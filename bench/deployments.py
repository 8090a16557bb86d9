"""The platform a chaos run kills (`wrenn up`, or `wrenn control-plane` + `wrenn agent`), and what a data
directory leaves on the machine that no capsule holds."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.cleanup import SLOTS
from tests.stack import Stack, free_port, start_wrenn

from .common import IMAGES


class Deployment:
    """The platform under test: processes by part name, an admin client, the agent's data directory."""

    parts: tuple[str, ...]
    root: Path
    data_dir: Path  # the agent's

    def start(self, part: str | None = None) -> None:
        raise NotImplementedError

    def kill(self, part: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def client(self) -> httpx.Client:
        raise NotImplementedError

    def log_tail(self) -> str:
        raise NotImplementedError


class Up(Deployment):
    """`wrenn up`: one process, control plane and agent in it."""

    parts = ("up",)

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = self.data_dir = root
        (root / "images").symlink_to(IMAGES)
        self.stack = Stack(root, f"sqlite+aiosqlite:///{root / 'wrenn.db'}", free_port(), free_port(), extra_env=env)

    def start(self, part: str | None = None) -> None:
        self.stack.start(timeout=180)

    def kill(self, part: str) -> None:
        self.stack.stop(9)

    def stop(self) -> None:
        self.stack.stop()

    def client(self) -> httpx.Client:
        return self.stack.client()

    def log_tail(self) -> str:
        return self.stack.log_file.read_text()[-3000:]


class Split(Deployment):
    """`wrenn control-plane` on SQLite and one `wrenn agent` joining it with a one-time token, each in a
    process (and data directory) of its own. One control plane: transitions are settled at once, as under
    `wrenn up` (WRENN_TRANSITION_GRACE_SEC=0)."""

    parts = ("control-plane", "agent")

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.cp_dir, self.data_dir = root / "cp", root / "agent"
        self.cp_dir.mkdir()
        (self.data_dir / "images").mkdir(parents=True)
        for entry in IMAGES.iterdir():  # the agent's own `teams/`, the machine's base image
            if entry.name != "teams":
                (self.data_dir / "images" / entry.name).symlink_to(entry)
        (self.data_dir / "images" / "teams").mkdir()
        self.cp_port, self.agent_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.cp_port}"
        database = f"sqlite+aiosqlite:///{self.cp_dir / 'wrenn.db'}"
        self.env = {
            "control-plane": {
                "WRENN_DIR": str(self.cp_dir),
                "DATABASE_URL": database,
                "WRENN_CP_LISTEN_ADDR": f"127.0.0.1:{self.cp_port}",
                "WRENN_TRANSITION_GRACE_SEC": "0",
                **env,
            },
            "agent": {
                "WRENN_DIR": str(self.data_dir),
                "WRENN_HOST_LISTEN_ADDR": f"127.0.0.1:{self.agent_port}",
                "WRENN_CP_URL": self.base_url,
                **env,
            },
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_key = ""

    def _log(self, part: str) -> Path:
        return self.root / f"{part}.log"

    def start(self, part: str | None = None) -> None:
        for name in [part] if part else list(self.parts):
            last_beat = self._heartbeat() if name == "agent" else None
            with self._log(name).open("ab") as log:
                self.processes[name] = start_wrenn(name, self.env[name], log)
            if name == "control-plane":
                self._wait(lambda: httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200, name)
                if not self.api_key:
                    self.api_key, token = asyncio.run(self._admin_and_token())
                    self.env["agent"]["WRENN_REGISTRATION_TOKEN"] = token
            else:  # serving once it beat: it re-adopted its capsules and holds its token again
                self._wait(partial(self._beat_after, last_beat), name)

    def _beat_after(self, last: str | None) -> bool:
        return self._heartbeat() not in (None, last)

    def _heartbeat(self) -> str | None:
        """The agent's host's last heartbeat while it is online, or None."""
        if not self.api_key:
            return None
        with self.client() as http:
            hosts = http.get("/v1/hosts").json()
        for host in hosts:
            if host.get("address") == f"127.0.0.1:{self.agent_port}" and host.get("status") == "online":
                return str(host.get("last_heartbeat_at"))
        return None

    def _wait(self, ready: Callable[[], bool], part: str, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.processes[part].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wrenn {part} did not start:\n{self._log(part).read_text()[-3000:]}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    async def _admin_and_token(self) -> tuple[str, str]:
        """The admin key and a one-time registration token of a shared host, as an operator makes them."""
        from wrenn_server.controlplane.db.engine import make_engine, make_sessionmaker
        from wrenn_server.controlplane.services import hosts as host_service
        from wrenn_server.controlplane.services.bootstrap import ensure_admin_key

        engine = make_engine(self.env["control-plane"]["DATABASE_URL"])
        try:
            sessionmaker = make_sessionmaker(engine)
            key = await ensure_admin_key(sessionmaker, None)
            async with sessionmaker() as session:
                _, token = await host_service.create_host(session, type="regular")
                await session.commit()
            return key, token
        finally:
            await engine.dispose()

    def kill(self, part: str) -> None:
        process = self.processes.pop(part)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for name in reversed(self.parts):  # the agent first: it still reports its capsules' states
            process = self.processes.pop(name, None)
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=60)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p}\n{self._log(p).read_text()[-1500:]}" for p in self.parts if self._log(p).exists())


def live_records(data_dir: Path, live_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The agent's records (guest name → record) of the capsules the API still lists."""
    found = {}
    for state in (data_dir / "sandboxes").glob("*/state.json"):
        try:
            record = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if record.get("sandbox_id") in live_ids:
            found[state.parent.name] = record
    return found


def owner_of(path: str, data_dir: Path) -> str | None:
    """The guest name a path under `<data>/sandboxes/<name>/` belongs to."""
    match = re.search(re.escape(str(data_dir / "sandboxes")) + r"/([^/\s]+)", path)
    return match.group(1) if match else None


def leaks(data_dir: Path, live_ids: set[str]) -> dict[str, list[str]]:
    """What the machine holds for the data directory that no capsule the API lists (`live_ids`) does."""
    records = live_records(data_dir, live_ids)
    names = set(records)
    runsc = ["runsc", "--root", str(data_dir / "runsc"), "list", "-quiet"]
    listed = subprocess.run(runsc, capture_output=True, text=True)
    sandboxes = [name for name in listed.stdout.split() if name not in names]
    qemu = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmdline and str(data_dir) in cmdline and owner_of(cmdline, data_dir) not in names:
                qemu.append(f"pid {entry.name}: {cmdline[:200]}")
    mounts = [
        target
        for target in (line.split()[1] for line in Path("/proc/mounts").read_text().splitlines())
        if target.startswith(str(data_dir) + "/") and owner_of(target, data_dir) not in names
    ]
    held = {int(r["slot"]) for r in records.values() if not r.get("released")}
    owner = str(data_dir.resolve())
    slots = []
    for path in SLOTS.glob("*") if SLOTS.exists() else []:
        try:
            if path.read_text() == owner and int(path.name) not in held:
                slots.append(path.name)
        except (OSError, ValueError):
            continue
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    namespaces = [ns for ns in netns if re.fullmatch(r"wrenn-c?ns-(\d+)", ns) and ns.rsplit("-", 1)[1] in slots]
    loops = []
    for line in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines():
        backing = line.rsplit("(", 1)[-1].rstrip(")")
        if backing.startswith(str(data_dir) + "/") and owner_of(backing, data_dir) not in names:
            loops.append(line)
    return {
        "sandboxes_without_row": sandboxes,
        "qemu_without_row": qemu,
        "mounts": mounts,
        "network_slots": slots,
        "network_namespaces": namespaces,
        "loop_devices": loops,
    }
