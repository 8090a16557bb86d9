"""A capsule's network, on every runtime: its services reached from the host, no capsule reaching another,
egress through NAT."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_network_reachability_and_isolation(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    other = await create(agent)
    try:
        await agent.stub.StartBackground(
            pb.ExecRequest(
                sandbox_id=other.sandbox_id, cmd="python3", args=["-m", "http.server", "--bind", "127.0.0.1", "8080"]
            ),
            metadata=agent.md,
        )
        # A service bound to the capsule's loopback is forwarded to its own address, so the host reaches it.
        url = f"http://{other.host_ip}:8080/"
        for _ in range(50):
            probe = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url],
                capture_output=True,
                text=True,
            )
            if probe.stdout == "200":
                break
            await asyncio.sleep(0.2)
        assert probe.stdout == "200"
        # ...but no capsule reaches another capsule.
        cross = await sh(agent, capsule, f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 {url} || true")
        assert cross.stdout.strip() in (b"000", b"")
        assert (
            await sh(agent, capsule, "ip -4 -o addr show eth0 2>/dev/null || cat /proc/net/fib_trie")
        ).exit_code == 0
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=other.sandbox_id), metadata=agent.md)


async def test_egress_is_nated(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    """A server in a namespace of our own plays 'the internet'; the capsule reaches it through NAT."""
    ns = "wrenn-test-outside"
    cmds = [
        f"ip netns add {ns}",
        f"ip link add wrenn-tout type veth peer name eth0 netns {ns}",
        "ip addr add 198.18.0.1/24 dev wrenn-tout",
        "ip link set wrenn-tout up",
        f"ip -n {ns} addr add 198.18.0.2/24 dev eth0",
        f"ip -n {ns} link set eth0 up",
        f"ip -n {ns} link set lo up",
        f"ip -n {ns} route add default via 198.18.0.1",
    ]
    for c in cmds:
        subprocess.run(c.split(), check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-m", "http.server", "--bind", "198.18.0.2", "8000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = b""
        for _ in range(20):
            out = (
                await sh(
                    agent,
                    capsule,
                    "curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://198.18.0.2:8000/ || true",
                )
            ).stdout
            if out == b"200":
                break
            await asyncio.sleep(0.2)
        assert out == b"200"
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", "wrenn-tout"], check=False, stderr=subprocess.DEVNULL)
