"""A capsule that served and made network connections can be snapshotted and checkpointed at once: the
connections are cut (as a VM snapshot's copy would find them gone), nothing waits for TIME_WAIT to expire."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.guests import guest
from wrenn_server.hostagent.runtimes.base import RuntimeState
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

SERVE = "python3 -m http.server --bind {bind} {port}"
OUTSIDE_NS, OUTSIDE_LINK, OUTSIDE = "wrenn-tnet-out", "wrenn-tnet", "198.18.7.2"
# The guest opens a connection and closes it first, so its side is the one left in TIME_WAIT.
CONNECT_AND_CLOSE = f"import socket; socket.create_connection(('{OUTSIDE}', 8000), timeout=5).close()"


@pytest.fixture
def outside() -> Iterator[str]:
    """A server in a namespace of our own plays 'the internet' (see test_egress_is_nated)."""
    cmds = [
        f"ip netns add {OUTSIDE_NS}",
        f"ip link add {OUTSIDE_LINK} type veth peer name eth0 netns {OUTSIDE_NS}",
        f"ip addr add 198.18.7.1/24 dev {OUTSIDE_LINK}",
        f"ip link set {OUTSIDE_LINK} up",
        f"ip -n {OUTSIDE_NS} addr add {OUTSIDE}/24 dev eth0",
        f"ip -n {OUTSIDE_NS} link set eth0 up",
        f"ip -n {OUTSIDE_NS} route add default via 198.18.7.1",
    ]
    for c in cmds:
        subprocess.run(c.split(), check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE_NS, "python3", "-m", "http.server", "--bind", OUTSIDE, "8000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield OUTSIDE
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", OUTSIDE_NS], check=False)
        subprocess.run(["ip", "link", "del", OUTSIDE_LINK], check=False, stderr=subprocess.DEVNULL)


async def get(url: str) -> str:
    """One HTTP request from the host, as the port proxy makes it; answers the status (000: no answer)."""
    for _ in range(100):
        probe = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url],
            capture_output=True,
            text=True,
        )
        if probe.stdout == "200":
            break
        await asyncio.sleep(0.2)
    return probe.stdout


async def serve_and_use(agent: AgentHandle, info: pb.SandboxInfo) -> None:
    """A web app on the capsule's address and one on its loopback (relayed by envd), each asked once from the
    host; an outbound connection from the capsule to one of them through its own address."""
    for bind, port in (("0.0.0.0", 8080), ("127.0.0.1", 8081)):
        cmd = SERVE.format(bind=bind, port=port).split()
        await agent.stub.StartBackground(
            pb.ExecRequest(sandbox_id=info.sandbox_id, cmd=cmd[0], args=cmd[1:]), metadata=agent.md
        )
    for port in (8080, 8081):
        assert await get(f"http://{info.host_ip}:{port}/") == "200"
    # The app closes each connection after its answer (HTTP/1.0): the guest's side is the one in TIME_WAIT.
    out = await sh(agent, info, "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/")
    assert out.stdout == b"200"


async def test_a_snapshot_right_after_serving_requests_succeeds(agent: AgentHandle, outside: str) -> None:
    source = await create(agent, memory_mb=256, disk_size_mb=512)
    try:
        await serve_and_use(agent, source)
        for _ in range(50):  # the outside server may still be starting
            if (await sh(agent, source, f'python3 -c "{CONNECT_AND_CLOSE}"')).exit_code == 0:
                break
            await asyncio.sleep(0.2)
        assert (await sh(agent, source, f'python3 -c "{CONNECT_AND_CLOSE}"')).exit_code == 0
        team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
        request = pb.SnapshotRequest(sandbox_id=source.sandbox_id, team_id=team, template_id=template_id)
        info = await agent.stub.SnapshotSandbox(request, metadata=agent.md)
        assert info.size_bytes > 0
        # The source goes on serving, and so does a capsule started from the snapshot.
        assert await get(f"http://{source.host_ip}:8080/") == "200"
        child = await agent.stub.CreateSandbox(
            pb.CreateSandboxRequest(
                sandbox_id=new_id(), template="snap", template_id=template_id, team_id=team, vcpus=1, memory_mb=256
            ),
            metadata=agent.md,
        )
        try:
            assert child.status == pb.SANDBOX_STATUS_RUNNING
            assert await get(f"http://{child.host_ip}:8080/") == "200"
            assert await get(f"http://{child.host_ip}:8081/") == "200"
            # A second snapshot at once, after the child served too.
            again = pb.SnapshotRequest(sandbox_id=child.sandbox_id, team_id=team, template_id=str(uuid.uuid4()))
            assert (await agent.stub.SnapshotSandbox(again, metadata=agent.md)).size_bytes > 0
        finally:
            await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=child.sandbox_id), metadata=agent.md)
        await agent.stub.DeleteTemplate(pb.TemplateRef(team_id=team, template_id=template_id), metadata=agent.md)
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=source.sandbox_id), metadata=agent.md)


async def test_a_pause_right_after_serving_requests_releases_the_memory(agent: AgentHandle) -> None:
    """The connections the capsule closed (TIME_WAIT) do not keep a paused capsule frozen in memory."""
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    manager.checkpoint_after_sec = 0.1
    try:
        await serve_and_use(agent, box)
        await agent.stub.PauseSandbox(ref, metadata=agent.md)
        image = workdir / "checkpoint" / "checkpoint.img"
        for _ in range(100):
            if image.is_file() and await manager.runtime.state(name) is RuntimeState.MISSING:
                break
            await asyncio.sleep(0.1)
        assert image.is_file() and await manager.runtime.state(name) is RuntimeState.MISSING  # memory released
        await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        assert await get(f"http://{box.host_ip}:8080/") == "200"
        assert await get(f"http://{box.host_ip}:8081/") == "200"
    finally:
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
        await agent.stub.DestroySandbox(ref, metadata=agent.md)
