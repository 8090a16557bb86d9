"""Two host agents with different data directories on one machine, as `wrenn up` beside the test suite's
own agents: nothing one of them does at its start, on a destroy or at a restart ends a capsule of the other.

They share the machine's network slots and, as the tests do, an image directory (the second agent's
`images` is a symlink to the first's). The first agent's capsule runs on an image version that is no longer
`current` (the image was rebuilt since it started): exactly what a collection of unused templates removes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.agent_process import skip_without_gvisor
from tests.cleanup import SLOTS, purge_data_dir
from tests.guests import guest
from tests.skips import skip_missing
from wrenn_server.hostagent.network import Network, Slot
from wrenn_server.hostagent.runtimes import RUNTIMES, build_runtime, select_runtime
from wrenn_server.hostagent.settings import AgentSettings
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc

from .agent import Agent, _start, agent_team, slot_namespaces
from .harness import Harness
from .pg import free_port


async def start_agent(root: Path) -> Agent:
    """A gVisor agent on `root/controlplane-agent` (its `images/minimal` is `root/images/minimal`), without a
    warm pool (no guest of its own beyond the test's capsules)."""
    settings = AgentSettings(
        dir=root / "controlplane-agent", host_listen_addr=f"127.0.0.1:{free_port()}", runtime="gvisor", pool_size=0
    )
    images = settings.dir / "images"
    (images / "teams").mkdir(parents=True, exist_ok=True)
    (images / "minimal").symlink_to(root / "images" / "minimal")
    host_agent = await _start(settings)
    channel = grpc.aio.insecure_channel(settings.host_listen_addr)
    return Agent(settings, host_agent, channel, pb_grpc.HostAgentServiceStub(channel))  # type: ignore[no-untyped-call]


@pytest.fixture
async def roots(data_dir: Path) -> AsyncIterator[tuple[Path, Path]]:
    """The first agent's root, with an image version `old` (the machine's image, its files hard-linked) that
    is `current`, and the second's, whose `images` is the first one's."""
    await skip_without_gvisor(data_dir)
    first = Path(tempfile.mkdtemp(prefix="wrenn-first-agent-", dir="/var/tmp"))
    second = Path(tempfile.mkdtemp(prefix="wrenn-second-agent-", dir="/var/tmp"))
    try:
        built = (data_dir / "images" / "minimal" / "current").resolve()
        old = first / "images" / "minimal" / "old"
        old.mkdir(parents=True)
        await asyncio.to_thread(subprocess.run, ["cp", "-al", str(built / "rootfs"), str(old / "rootfs")], check=True)
        shutil.copy2(built / "manifest.json", old / "manifest.json")
        (old.parent / "current").symlink_to("old")
        (second / "images").symlink_to(first / "images")
        yield first, second
    finally:
        for root in (first, second):
            await asyncio.to_thread(purge_data_dir, root)


def make_current(minimal: Path, version: Path) -> None:
    """The image was rebuilt: `current` names another version."""
    tmp = minimal / "current.new"
    tmp.symlink_to(version)
    tmp.replace(minimal / "current")


def netns_identity(host_ip: str) -> dict[str, int]:
    return {name: os.stat(f"/run/netns/{name}").st_ino for name in sorted(slot_namespaces(host_ip))}


async def create(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    resp = await http.post("/v1/capsules", json={}, headers=headers)
    assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
    body: dict[str, str] = resp.json()
    return body


async def os_release(http: httpx.AsyncClient, headers: dict[str, str], wire_id: str) -> str:
    body = {"cmd": "/bin/sh", "args": ["-c", "cat /etc/os-release; ls /usr/share/doc | wc -l"]}
    resp = await http.post(f"/v1/capsules/{wire_id}/exec", json=body, headers=headers)
    assert resp.status_code == 200 and resp.json()["exit_code"] == 0, resp.text
    return str(resp.json()["stdout"])


async def test_an_agent_leaves_the_capsules_of_another_alone(
    http: httpx.AsyncClient, harness: Harness, data_dir: Path, roots: tuple[Path, Path]
) -> None:
    first_root, second_root = roots
    minimal = first_root / "images" / "minimal"
    old = (minimal / "old").resolve()
    first = await start_agent(first_root)
    second: Agent | None = None
    try:
        _, first_headers = await agent_team(harness, first)
        capsule = await create(http, first_headers)
        wire_id = capsule["id"]
        _, workdir = guest(first.dir, wire_id)
        record = (workdir / "state.json").read_text()
        assert f'"template_dir": "{old}"' in record  # it runs on `old`
        seen = await os_release(http, first_headers, wire_id)
        assert "Debian" in seen
        network = netns_identity(capsule["host_ip"])
        slot = Slot(int(next(iter(network)).rsplit("-", 1)[1]))
        assert (SLOTS / str(slot.index)).read_text() == str(first.dir.resolve())
        make_current(minimal, (data_dir / "images" / "minimal" / "current").resolve())

        # The other agent starts (it collects unused templates and reclaims network leftovers), runs and
        # destroys a capsule of its own (it collects again), and restarts.
        second = await start_agent(second_root)
        _, second_headers = await agent_team(harness, second)
        own = await create(http, second_headers)
        assert "Debian" in await os_release(http, second_headers, own["id"])
        resp = await http.delete(f"/v1/capsules/{own['id']}", headers=second_headers)
        assert resp.status_code == 204, resp.text
        await second.restart()

        # The first agent's capsule kept its image version, its network and its guest.
        assert (old / "rootfs" / "etc" / "os-release").is_file()
        assert netns_identity(capsule["host_ip"]) == network
        assert (SLOTS / str(slot.index)).read_text() == str(first.dir.resolve())
        assert await os_release(http, first_headers, wire_id) == seen
        got = (await http.get(f"/v1/capsules/{wire_id}", headers=first_headers)).json()
        assert got["status"] == "running" and "end_reason" not in got["metadata"], got

        # Its own agent restarts and re-adopts it, as it is.
        await first.restart()
        assert (await first.sandboxes())[wire_id].status == pb.SANDBOX_STATUS_RUNNING
        assert netns_identity(capsule["host_ip"]) == network
        assert await os_release(http, first_headers, wire_id) == seen

        # Once its last capsule is gone, the old version is removed after all (by the agent that used it).
        resp = await http.delete(f"/v1/capsules/{wire_id}", headers=first_headers)
        assert resp.status_code == 204, resp.text
        assert not old.exists()
    finally:
        for agent in (first, second):
            if agent is not None:
                assert not await agent.close()


async def test_a_slot_another_agent_holds_is_neither_torn_down_nor_taken(tmp_path: Path) -> None:
    """An agent's record may name a slot number it gave up and another agent took since: removing that
    record's network must leave the other agent's slot alone. And a number whose namespaces exist without a
    slot file (someone's, whatever happened to the file) is not taken, so a failed build cannot remove them."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "other").mkdir()
    mine, other = Network(str(tmp_path / "mine")), Network(str(tmp_path / "other"))
    slot = other.allocate()
    try:
        await other.setup(slot)
        before = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (slot.router_ns, slot.capsule_ns)}

        await mine.teardown(slot)

        assert {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in before} == before
        assert (SLOTS / str(slot.index)).read_text() == str(tmp_path / "other")

        (SLOTS / str(slot.index)).unlink()  # the file is lost; the namespaces are still someone's
        taken = mine.allocate()
        try:
            assert taken.index != slot.index
            assert {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in before} == before
        finally:
            await mine.teardown(taken)
        other.claim(slot.index)
    finally:
        await other.teardown(slot)
    assert not any(Path(f"/run/netns/{ns}").exists() for ns in (slot.router_ns, slot.capsule_ns))


async def test_auto_keeps_the_runtime_the_capsules_run_on(data_dir: Path, tmp_path: Path) -> None:
    """`auto` may choose differently from one start to the next (a probe that fails under load, KVM that
    comes or goes): an agent of another runtime would not know the data directory's capsules, and its control
    plane would find them gone. So `auto` first tries the runtime the recorded capsules run on."""
    (tmp_path / "images").symlink_to(data_dir / "images")
    usual = (await select_runtime("auto", tmp_path)).name
    recorded = next(name for name in RUNTIMES if name != usual)
    probe = await build_runtime(recorded, tmp_path).probe()
    if not probe.available:
        skip_missing(f"runtime {recorded}", f"only {usual} runs here ({recorded}: {probe.reason})")
    state = tmp_path / "sandboxes" / "cl-recorded" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"sandbox_id": "cl-recorded", "runtime": recorded}))

    assert (await select_runtime("auto", tmp_path)).name == recorded
    assert (await select_runtime(usual, tmp_path)).name == usual  # a runtime named outright is used as named
