"""The versioned, typed contract between the host agent and envd: envd says who it is, the agent's client
speaks the typed messages to a real envd, and refuses an envd of another protocol version with the reason."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from wrenn_server.envd import __version__ as ENVD_VERSION
from wrenn_server.hostagent.envd_client import EnvdClient
from wrenn_server.hostagent.errors import InvalidArgument, NotFound, WrongState
from wrenn_server.proto import envd as wire
from wrenn_server.proto.envd import (
    PROTOCOL_VERSION,
    EndEvent,
    Mode,
    OutputEvent,
    OutputKind,
    ProcessRef,
    StartEvent,
    StartRequest,
)

from .conftest import REPO, running_envd


def envd_client(http: httpx.AsyncClient) -> EnvdClient:
    """The host agent's client, pointed at the envd behind `http`."""
    url = http.base_url
    assert url.host and url.port
    return EnvdClient(url.host, url.port)


@pytest.fixture
async def agent_client(fresh_client: httpx.AsyncClient) -> AsyncIterator[EnvdClient]:
    envd = envd_client(fresh_client)
    yield envd
    await envd.close()


async def test_envd_says_its_version_and_protocol(fresh_client: httpx.AsyncClient) -> None:
    hello = {"version": ENVD_VERSION, "protocol": PROTOCOL_VERSION}
    assert (await fresh_client.get("/health")).json() == hello
    init = await fresh_client.post("/init", json={"envVars": {"A": "1"}})
    assert (init.status_code, init.json()) == (200, hello)
    resumed = await fresh_client.post("/snapshot/resume", json={})
    assert (resumed.status_code, resumed.json()) == (200, hello)


async def test_the_agent_client_speaks_the_typed_messages(agent_client: EnvdClient, tmp_path: Path) -> None:
    envd = agent_client
    assert envd.hello is None
    hello = await envd.init("", {"GREETING": "hi"}, "cl-protocol")
    assert (hello.version, hello.protocol) == (ENVD_VERSION, PROTOCOL_VERSION) and envd.hello == hello

    ran = await envd.run(StartRequest("sh", Mode.RUN, ["-c", 'echo "$GREETING"; echo err >&2; exit 3']))
    assert (ran.exit_code, ran.stdout, ran.stderr) == (3, b"hi\n", b"err\n") and ran.pid > 0

    started = await envd.start_background(StartRequest("sleep", Mode.RUN, ["30"], tag="sleeper"))
    untagged = await envd.start_background(StartRequest("sleep", Mode.RUN, ["31"]))
    assert (started.tag, untagged.tag) == ("sleeper", None)
    listed = {p.pid: p for p in await envd.processes()}
    assert (listed[started.pid].tag, listed[started.pid].args) == ("sleeper", ["30"])
    assert (listed[untagged.pid].tag, listed[untagged.pid].args) == (None, ["31"])
    await envd.signal(ProcessRef(pid=untagged.pid), "SIGKILL")
    with pytest.raises(InvalidArgument, match="no terminal"):
        await envd.resize(ProcessRef(tag="sleeper"), 80, 24)
    await envd.signal(ProcessRef(tag="sleeper"), "SIGKILL")
    assert "sleeper" not in {p.tag for p in await envd.processes()}

    events = [e async for e in envd.stream(StartRequest("sh", Mode.RUN, ["-c", "printf out; printf err >&2"]))]
    assert isinstance(events[0], StartEvent) and events[-1] == EndEvent(0, None)
    outputs = {e.kind: e.data for e in events if isinstance(e, OutputEvent)}
    assert outputs == {OutputKind.STDOUT: b"out", OutputKind.STDERR: b"err"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b"typed"

    written = await envd.write_file(str(tmp_path / "dir" / "f.txt"), chunks())
    assert (written.name, written.size, written.type.value) == ("f.txt", 5, "file")
    assert b"".join([c async for c in envd.read_file(written.path)]) == b"typed"
    assert [e.path for e in await envd.list_dir(str(tmp_path), depth=2)] == [str(tmp_path / "dir"), written.path]
    made = await envd.make_dir(str(tmp_path / "made"))
    assert (await envd.stat(made.path)).type.value == "directory"
    await envd.remove(made.path)
    with pytest.raises(NotFound):
        await envd.stat(made.path)


def envd_copy(patch: Callable[[Path], None]) -> Iterator[Path]:
    """A copy of this checkout's envd and its wire contract, laid out as in the guest, changed by `patch`."""
    root = Path(tempfile.mkdtemp(prefix="wrenn-envd-"))
    package = root / "wrenn_server"
    shutil.copytree(REPO / "wrenn_server" / "envd", package / "envd", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "proto").mkdir()
    shutil.copy(REPO / "wrenn_server" / "proto" / "envd.py", package / "proto" / "envd.py")
    shutil.copy(REPO / "wrenn_server" / "__init__.py", package / "__init__.py")
    patch(package)
    yield root
    shutil.rmtree(root)


def replace_in(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} is no longer in {path}: update the test's patch"
    path.write_text(text.replace(old, new))


def newer_protocol(package: Path) -> None:
    """An envd a version ahead of this agent."""
    replace_in(package / "proto" / "envd.py", f"PROTOCOL_VERSION = {PROTOCOL_VERSION}\n", "PROTOCOL_VERSION = 99\n")


def before_versioning(package: Path) -> None:
    """An envd from before the protocol had versions: /health said only its version, /init and
    /snapshot/resume answered 204 with no body."""
    app = package / "envd" / "app.py"
    health = "Response:\n        return answer(HELLO)\n\n    async def init"
    replace_in(app, health, health.replace("answer(HELLO)", 'json_response({"version": "0.1.0"})'))
    replace_in(app, "return answer(HELLO)", "return Response(204)", count=2)


@pytest.mark.parametrize(
    ("patch", "version", "protocol"), [(newer_protocol, ENVD_VERSION, 99), (before_versioning, "0.1.0", 0)]
)
async def test_an_envd_of_another_protocol_is_refused_with_the_reason(
    patch: Callable[[Path], None], version: str, protocol: int
) -> None:
    copies = envd_copy(patch)
    root = next(copies)
    try:
        async with running_envd(root) as http:
            envd = envd_client(http)
            try:
                # It runs and answers (the agent does not hang on it)...
                assert (await http.get("/health")).status_code == 200
                # ...but the first call of a create, and of a resume, fails and says what to do.
                for handshake in (envd.init("", {}, "cl-old"), envd.forward_again()):
                    with pytest.raises(WrongState) as err:
                        await handshake
                    message = err.value.message
                    assert f"runs envd {version}, which speaks envd protocol {protocol}," in message, message
                    assert f"this host agent speaks protocol {PROTOCOL_VERSION}" in message, message
                    assert "recreate the capsule from a current template" in message, message
                    assert envd.hello is not None and envd.hello.protocol == protocol
            finally:
                await envd.close()
    finally:
        next(copies, None)


SAMPLES: list[wire.Message] = [
    wire.Hello("1.2.3", PROTOCOL_VERSION),
    wire.InitRequest(default_user="u", env_vars={"A": "1"}, default_workdir="/w", sandbox_id="cl-1"),
    wire.InitRequest(),
    StartRequest("sh", Mode.STREAM, ["-c", "x"], {"E": "v"}, "/", "root", "t", True, wire.PtySize(80, 24), 1.5),
    wire.Started(7, None),
    wire.RunResult(7, 3, b"\x00\xffout", b"", 12),
    ProcessRef(tag="t"),
    wire.InputRequest(pid=7, data=b"\x04"),
    wire.SignalRequest(tag="t", signal=15),
    wire.ResizeRequest(pid=7, cols=100, rows=30),
    wire.ProcessList([wire.ProcessEntry(7, None, "sh", ["-c"], {}, "/", False)]),
    StartEvent(7, "t"),
    OutputEvent(OutputKind.PTY, b"\x1b[0m"),
    EndEvent(137, 9),
    wire.KeepAlive(),
    wire.EntryList([wire.EntryInfo("f", "/f", wire.EntryType.SYMLINK, 1, 0o777, "lrwxrwxrwx", "r", "r", 5, "g")]),
    wire.MoveRequest("/a", "/b"),
    wire.ErrorBody(wire.ErrorCode.NOT_FOUND, "gone"),
    wire.Metrics(1, 2, 3.5, 4, 5, 6, 7),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_reads_back_what_it_wrote(message: wire.Message) -> None:
    line = message.encode()
    if isinstance(message, StartEvent | OutputEvent | EndEvent | wire.KeepAlive):
        assert wire.parse_event(line) == message
    else:
        assert type(message).decode(line) == message
