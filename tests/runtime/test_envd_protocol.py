"""The host agent and the envd of a capsule's image: the version envd reports reaches the capsule's metadata,
and a capsule whose template holds an envd of another protocol fails to start, saying what to do."""

from __future__ import annotations

import json
import shutil
import uuid

import grpc
import pytest

from tests.skips import skip_unless_capable
from wrenn_server.envd import __version__ as ENVD_VERSION
from wrenn_server.hostagent.runtimes.base import Capabilities
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto.envd import PROTOCOL_VERSION

from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

GUEST_PROTOCOL_FILE = "usr/local/lib/wrenn/wrenn_server/proto/envd.py"  # where the image builder puts it


def new_id() -> str:
    return "cl-" + uuid.uuid4().hex[:25]


async def test_the_capsule_metadata_carries_its_own_envd_version(agent: AgentHandle) -> None:
    req = pb.CreateSandboxRequest(sandbox_id=new_id(), template="minimal", vcpus=1, memory_mb=512)
    info = await agent.stub.CreateSandbox(req, metadata=agent.md)
    try:
        # The image under test was built from this checkout, so its envd is this one.
        assert info.metadata["envd_version"] == ENVD_VERSION, dict(info.metadata)
        got = await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)
        assert got.metadata["envd_version"] == ENVD_VERSION
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)


async def test_a_template_whose_envd_speaks_another_protocol_fails_the_create(
    agent: AgentHandle, runtime_name: str, capabilities: Capabilities
) -> None:
    """A snapshot template layered over the image, whose only change is an envd that speaks protocol 99 (as one
    made under another release would): the create fails at envd's first answer, not after a timeout."""
    skip_unless_capable(capabilities, "layered_files", "the patched envd is a file layer over the image's files")
    images = agent.settings.dir / "images"
    base = (images / "minimal" / "current").resolve()
    source = (base / "rootfs" / GUEST_PROTOCOL_FILE).read_text()
    line = f"PROTOCOL_VERSION = {PROTOCOL_VERSION}\n"
    assert line in source, "the image's envd does not declare its protocol where this test expects it"
    team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
    target = images / "teams" / team / template_id
    patched = target / "upper" / GUEST_PROTOCOL_FILE
    patched.parent.mkdir(parents=True)
    patched.write_text(source.replace(line, "PROTOCOL_VERSION = 99\n"))
    (target / "snapshot.json").write_text(json.dumps({"base": str(base), "runtime": runtime_name}))
    sid = new_id()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.stub.CreateSandbox(
                pb.CreateSandboxRequest(
                    sandbox_id=sid, template="old", template_id=template_id, team_id=team, vcpus=1, memory_mb=512
                ),
                metadata=agent.md,
            )
        detail = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INTERNAL and "failed to start" in detail, detail
        assert "speaks envd protocol 99" in detail and f"speaks protocol {PROTOCOL_VERSION}" in detail, detail
        assert "recreate the capsule from a current template" in detail, detail
        listed = (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
        assert sid not in {s.sandbox_id for s in listed}
        assert not (agent.settings.dir / "sandboxes" / sid).exists()
    finally:
        shutil.rmtree(target.parent)
