"""`wrenn up` as a user runs it: the lines it prints, the env file it writes, and a clean stop on SIGTERM or
Ctrl-C (the capsule restart itself is tests/sdk/test_sdk.py::test_capsules_survive_a_restart_of_wrenn_up)."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cleanup import SLOTS, purge_data_dir
from tests.guests import guest
from tests.skips import skip_missing
from tests.stack import Stack, free_port, start_wrenn
from wrenn_server.hostagent.runtimes import NoRuntime, select_runtime

pytestmark = pytest.mark.runtime

CONFIG_KEYS = ["WRENN_BASE_URL", "WRENN_API_KEY", "WRENN_PROXY_DOMAIN"]


@pytest.fixture
def stack(data_dir: Path) -> Iterator[Stack]:
    """A `wrenn up` data directory of its own on SQLite, sharing the base image; purged at the end."""
    try:
        asyncio.run(select_runtime("auto", data_dir))
    except NoRuntime as exc:
        skip_missing("runtime", f"none can run here: {exc}")
    root = Path(tempfile.mkdtemp(prefix="wrenn-up-", dir="/var/tmp"))
    (root / "images").symlink_to(data_dir / "images")
    stack = Stack(root, f"sqlite+aiosqlite:///{root / 'wrenn.db'}", free_port(), free_port())
    try:
        yield stack
    finally:
        if stack.process is not None and stack.process.poll() is None:
            stack.process.kill()
            stack.process.wait()
        purge_data_dir(root)


def launch(stack: Stack) -> Path:
    """`wrenn up` in a session of its own, stdout and stderr in separate files; returns (stdout's file) once
    it printed its configuration lines, which it does when it is up."""
    out = stack.data_dir / "stdout.txt"
    with out.open("wb") as stdout, stack.log_file.open("ab") as stderr:
        stack.process = start_wrenn("up", stack.environment(), stdout, stderr)
    deadline = time.monotonic() + 180
    while len([line for line in out.read_text().splitlines(keepends=True) if line.endswith("\n")]) < 3:
        assert stack.process.poll() is None, f"wrenn up exited:\n{stack.log_file.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"wrenn up did not come up:\n{stack.log_file.read_text()[-3000:]}"
        time.sleep(0.1)
    return out


def processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid → (session id, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = status[status.rfind(")") + 2 :].split()
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[3]), cmdline)
    return found


def owned_slots(root: Path) -> set[int]:
    """The network slots the machine-wide slot directory gives to this data directory."""
    owner = str(root.resolve())
    slots = set()
    for path in SLOTS.glob("*") if SLOTS.exists() else []:
        try:
            if path.read_text() == owner:
                slots.add(int(path.name))
        except OSError:
            continue
    return slots


def mounts_under(root: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line.split()[1]]


def stop(stack: Stack, sig: int) -> int:
    """Signal `wrenn up` and wait for it to exit; answers its exit code."""
    assert stack.process is not None
    stack.process.send_signal(sig)
    try:
        code = stack.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"wrenn up did not stop after {signal.Signals(sig).name}:\n{stack.log_file.read_text()[-3000:]}")
    stack.process = None
    return code


def runsc_containers(root: Path) -> set[str]:
    listed = subprocess.run(["runsc", "--root", str(root / "runsc"), "list", "-quiet"], capture_output=True, text=True)
    return set(listed.stdout.split())


def test_up_prints_its_config_writes_the_env_file_and_stops_cleanly_on_sigterm(stack: Stack) -> None:
    """The configuration lines on stdout and in `$WRENN_DIR/env`, a key that works; SIGTERM ends it with
    code 0 and takes everything it started with it, except the capsule the user created."""
    out = launch(stack)
    assert stack.process is not None
    pid = stack.process.pid

    # The three lines a user pastes (or sources), on stdout and in $WRENN_DIR/env alike.
    printed = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert [line.split("=", 1)[0] for line in printed] == CONFIG_KEYS, printed
    assert stack.env_file.read_text().splitlines() == printed
    config = stack.config()
    assert config["WRENN_BASE_URL"] == f"http://127.0.0.1:{stack.cp_port}"
    assert config["WRENN_PROXY_DOMAIN"] == f"localhost:{stack.cp_port}"
    assert config["WRENN_API_KEY"].startswith("wrn_") and len(config["WRENN_API_KEY"]) == 36
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600  # it holds the admin key
    assert not (stack.data_dir / "env.tmp").exists()

    # The key works against the base URL, and only it.
    base = config["WRENN_BASE_URL"]
    wrong = httpx.get(f"{base}/v1/capsules", headers={"X-API-Key": "wrn_" + "0" * 32}, timeout=30)
    assert wrong.status_code == 401, wrong.text
    with stack.client() as http:
        resp = http.post("/v1/capsules", json={})
        assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
        capsule_id = resp.json()["id"]
        assert [c["id"] for c in http.get("/v1/capsules").json()] == [capsule_id]
        ran = http.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "/bin/true"})
        assert ran.status_code == 200 and ran.json()["exit_code"] == 0, ran.text
        hosts = http.get("/v1/hosts").json()  # the admin key sees the local host agent, registered and online
        assert [(h["address"], h["status"]) for h in hosts] == [(f"127.0.0.1:{stack.agent_port}", "online")]
        # With the runtime it said it runs, and what that runtime measured it can do here.
        said = next(line for line in out.read_text().splitlines() if line.startswith("# wrenn is up"))
        runtime = said.split("(runtime ", 1)[1].split(")", 1)[0]
        assert hosts[0]["runtime"] == runtime and hosts[0]["capabilities"]["restores"] == [runtime], hosts

    name, _ = guest(stack.data_dir, capsule_id)
    capsule_slot = int(ipaddress.IPv4Address(resp.json()["host_ip"])) - int(ipaddress.IPv4Address("10.11.0.0"))
    # Wait for the warm pool's idle guest (the agent keeps one ready from the start): a clean stop must
    # remove it, as it is no one's capsule. (A capsule taken from the pool keeps its guest's `wp-` name.)
    deadline = time.monotonic() + 180
    while not any(n.startswith("wp-") for n in runsc_containers(stack.data_dir) - {name}):
        assert time.monotonic() < deadline, f"no warm guest appeared: {runsc_containers(stack.data_dir)}"
        time.sleep(0.5)
    assert len(owned_slots(stack.data_dir)) > 1

    code = stop(stack, signal.SIGTERM)
    log = stack.log_file.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]

    # Nothing of `wrenn up` is left but the capsule, which outlives it on purpose (the next `wrenn up`
    # re-adopts it): no process of its session, no warm guest, no spare network slot.
    assert [cmd for sid, cmd in processes().values() if sid == pid] == []
    assert runsc_containers(stack.data_dir) == {name}
    state = subprocess.run(
        ["runsc", "--root", str(stack.data_dir / "runsc"), "state", name], capture_output=True, text=True
    )
    assert '"status": "running"' in state.stdout, state.stdout + state.stderr
    strays = [cmd for _, cmd in processes().values() if str(stack.data_dir) in cmd and name not in cmd]
    assert strays == []
    assert owned_slots(stack.data_dir) == {capsule_slot}
    assert not list((stack.data_dir / "sandboxes").glob("wp-*"))
    own = [str(stack.data_dir / "sandboxes" / name / "rootfs")]
    disk = stack.data_dir / "sandboxes" / name / "fs"
    if disk.is_symlink():  # its own disk (gVisor's loop-mounted ext4) lives on with it; no spare disk does
        own.append(str(disk.resolve()))
    assert sorted(mounts_under(stack.data_dir)) == sorted(own)


def test_ctrl_c_as_soon_as_it_is_up_stops_it_and_leaves_nothing_running(stack: Stack) -> None:
    """Stopped at once, while the agent still builds its spare network slots and warms its pool: whatever it
    was half-way through is undone; with no capsule, nothing of it stays on the machine."""
    launch(stack)
    assert stack.process is not None
    pid = stack.process.pid
    code = stop(stack, signal.SIGINT)
    log = stack.log_file.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert [cmd for sid, cmd in processes().values() if sid == pid] == []
    assert [cmd for _, cmd in processes().values() if str(stack.data_dir) in cmd] == []
    assert runsc_containers(stack.data_dir) == set()
    assert owned_slots(stack.data_dir) == set()
    assert mounts_under(stack.data_dir) == []
