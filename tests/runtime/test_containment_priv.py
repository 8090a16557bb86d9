"""A host's data directory is for root alone, and what the agent keeps on disk cannot call it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.guests import guest
from wrenn_server.hostagent.layout import DataDir
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create
from .conftest import TOKEN, AgentHandle

pytestmark = pytest.mark.runtime


async def test_the_data_directory_and_capsules_are_for_root_alone(agent: AgentHandle) -> None:
    agent.settings.dir.chmod(0o755)  # as an older agent left it
    await agent.restart()
    assert stat.S_IMODE(agent.settings.dir.stat().st_mode) == 0o700
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    try:
        _, workdir = guest(agent.settings.dir, box.sandbox_id)
        assert workdir.is_dir() and stat.S_IMODE(workdir.stat().st_mode) == 0o700
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)


async def test_the_credentials_file_holds_no_usable_token(agent: AgentHandle) -> None:
    path = DataDir(agent.settings.dir).credentials
    # What an agent registered before this change saved: the RPC token itself.
    legacy = {"host_id": "host-x", "token": "t", "refresh_token": "r", "rpc_token": TOKEN, "cp_url": ""}
    path.write_text(json.dumps(legacy))
    try:
        await agent.restart()
        saved = path.read_text()
        assert TOKEN not in saved and stat.S_IMODE(path.stat().st_mode) == 0o600
        for value in json.loads(saved).values():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await agent.stub.Ping(pb.PingRequest(), metadata=(("x-wrenn-agent-token", value),))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await agent.stub.Ping(pb.PingRequest(), metadata=agent.md)).runtime  # the real token still works
    finally:
        path.unlink(missing_ok=True)


# Capability numbers (linux/capability.h) a capsule must not hold, and everyday work that must still succeed.
CAP_DAC_READ_SEARCH, CAP_NET_ADMIN = 2, 12
# An ICMP echo, as `ping` sends it: on a datagram socket where raw sockets are refused (runsc removes NET_RAW),
# on a raw one where datagram ones are (Linux's default ping_group_range; a VM's root holds NET_RAW).
PING = """
import socket, struct
def checksum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t & 0xFFFF) + (t >> 16)
    return ~(t + (t >> 16)) & 0xFFFF
echo = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"wrenn!"
echo = echo[:2] + struct.pack("!H", checksum(echo)) + echo[4:]
try:
    s, header = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), 0
except PermissionError:
    s, header = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), 20
s.settimeout(5)
s.sendto(echo, ("127.0.0.1", 0))
while s.recv(128)[header] != 0:  # a raw socket sees the request too; wait for the reply
    pass
"""
EVERYDAY = (
    "set -e; id -u nobody >/dev/null; mkdir -p /w && echo x > /w/f && chown nobody:nogroup /w/f "
    "&& test $(stat -c %U /w/f) = nobody && sudo -n -u nobody cat /w/f >/dev/null "
    "&& git -C /w init -q && git -C /w -c user.email=a@b -c user.name=a commit -q --allow-empty -m x "
    "&& apt-get check >/dev/null && python3 -c 'import os; os.setgid(65534); os.setuid(65534)' "
    f"&& python3 -c '{PING}' && grep CapEff /proc/self/status"
)


async def test_a_capsule_holds_only_the_privileges_it_needs(agent: AgentHandle) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    try:
        out = await agent.stub.Exec(
            pb.ExecRequest(sandbox_id=box.sandbox_id, cmd="/bin/sh", args=["-c", EVERYDAY]), metadata=agent.md
        )
        assert out.exit_code == 0, out.stderr
        effective = int(out.stdout.split()[-1], 16)
        assert effective  # root in the capsule holds capabilities...
        manager = agent.agent.manager
        assert manager is not None
        if manager.runtime.capabilities.guest_capabilities_limited:
            assert not effective & (1 << CAP_NET_ADMIN | 1 << CAP_DAC_READ_SEARCH)  # ...but not these
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)


def test_doctor_says_whether_the_data_directory_is_for_root_alone(tmp_path: Path) -> None:
    env = {**os.environ, "WRENN_DIR": str(tmp_path), "COLUMNS": "400"}
    for mode, verdict in ((0o755, " no "), (0o700, " yes ")):
        tmp_path.chmod(mode)
        doctor = subprocess.run(
            [sys.executable, "-m", "wrenn_server.cli", "doctor"], env=env, capture_output=True, text=True, check=True
        )
        row = next(line for line in doctor.stdout.splitlines() if "data directory" in line)
        assert verdict in row and f"{mode:o}" in row
