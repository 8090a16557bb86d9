"""Extensions as a closed build ships them: a package installed for real (`pip install`, an entry point of
the group `wrenn.extensions`), loaded by `wrenn up` and `wrenn control-plane` alike, adding a route, a
middleware and a worker (tests/extensions/sample); and one that raises when it is loaded (tests/extensions/
broken), which stops the server with one clear line instead of a traceback."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cleanup import purge_data_dir
from tests.skips import skip_missing
from tests.stack import Stack, free_port, start_wrenn
from wrenn_server.hostagent.runtimes import NoRuntime, select_runtime

HERE = Path(__file__).parent / "extensions"
HEADER = "X-Sample-Extension"


def pip_install(package: str, into: Path) -> Path:
    """`pip install --target` of tests/extensions/<package> (from a copy: a build leaves files beside its
    sources); answers the directory to put on PYTHONPATH."""
    source = into / f"{package}-src"
    shutil.copytree(HERE / package, source)
    target = into / package
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    assert any(target.glob("*.dist-info/entry_points.txt")), f"{package} installed no entry points"
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extensions")
    return {name: pip_install(name, root) for name in ("sample", "broken")}


def with_path(target: Path) -> dict[str, str]:
    """The environment over ours that makes `target`'s distributions installed ones."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def up_dir(data_dir: Path) -> Iterator[Path]:
    """A `wrenn up` data directory of its own, sharing the base image; purged at the end."""
    root = Path(tempfile.mkdtemp(prefix="wrenn-ext-", dir="/var/tmp"))
    (root / "images").symlink_to(data_dir / "images")
    try:
        yield root
    finally:
        purge_data_dir(root)


def worker_log(data_dir: Path) -> list[str]:
    path = data_dir / "sample-worker.log"
    return path.read_text().splitlines() if path.exists() else []


def eventually(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.runtime
def test_wrenn_up_serves_an_installed_extension(installed: dict[str, Path], up_dir: Path) -> None:
    try:
        asyncio.run(select_runtime("auto", up_dir))
    except NoRuntime as exc:
        skip_missing("runtime", f"none can run here: {exc}")
    stack = Stack(up_dir, f"sqlite+aiosqlite:///{up_dir / 'wrenn.db'}", free_port(), free_port())
    stack.extra_env = with_path(installed["sample"])
    stack.start()
    try:
        assert worker_log(up_dir) == ["started"], "the worker runs once the server is up"
        with stack.client() as http:
            # The middleware marks the core's responses too.
            for path in ("/health", "/v1/capsules"):
                resp = http.get(path)
                assert resp.status_code == 200, resp.text
                assert resp.headers.get(HEADER) == "1", (path, dict(resp.headers))
            # The route sits behind the server's own authentication, and reads its database.
            anonymous = httpx.get(f"{stack.base_url}/v1/sample/whoami", timeout=10)
            assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
            whoami = http.get("/v1/sample/whoami")
            assert whoami.status_code == 200, whoami.text
            assert whoami.json()["teams"] >= 1 and whoami.json()["events_seen"] == []
            # The worker shares the server's event bus: a capsule's creation reaches it.
            created = http.post("/v1/capsules", json={})
            assert created.status_code == 201, created.text
            try:
                eventually(
                    lambda: "capsule.create" in http.get("/v1/sample/whoami").json()["events_seen"],
                    "the worker never saw the capsule's creation",
                )
            finally:
                assert http.delete(f"/v1/capsules/{created.json()['id']}").status_code == 204
        assert "capsule.create" in worker_log(up_dir)
    finally:
        process = stack.process
        stack.stop()
    assert process is not None and process.returncode == 0, stack.log_file.read_text()[-3000:]
    assert worker_log(up_dir)[-1] == "stopped", "shutdown cancels the worker, which saw its cancellation"


def test_control_plane_serves_an_installed_extension(installed: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    env = {
        **with_path(installed["sample"]),
        "WRENN_DIR": str(tmp_path),
        "WRENN_LISTEN": f"127.0.0.1:{port}",
        "WRENN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}",
        "WRENN_REDIS_URL": "",
        "REDIS_URL": "",
    }
    log = tmp_path / "cp.log"
    with log.open("wb") as out:
        process = start_wrenn("control-plane", env, out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
        assert health.status_code == 200 and health.headers.get(HEADER) == "1"
        anonymous = httpx.get(f"http://127.0.0.1:{port}/v1/sample/whoami", timeout=10)
        assert anonymous.status_code == 401 and anonymous.headers.get(HEADER) == "1"
        assert worker_log(tmp_path) == ["started"]
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert worker_log(tmp_path) == ["started", "stopped"]


@pytest.mark.parametrize("command", ["control-plane", pytest.param("up", marks=pytest.mark.runtime)])
def test_an_extension_that_fails_to_load_is_one_clear_error(
    command: str, installed: dict[str, Path], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = request.getfixturevalue("up_dir") if command == "up" else tmp_path
    env = {
        **with_path(installed["broken"]),
        "WRENN_DIR": str(data_dir),
        "WRENN_CP_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "WRENN_HOST_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'wrenn.db'}",
    }
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err, open(os.devnull, "wb") as out:
        process = start_wrenn(command, env, out, err)
    assert process.wait(timeout=120) == 1
    text = stderr.read_text()
    assert (
        "error: extension 'broken' (wrenn_ext_broken:setup, from wrenn-ext-broken 0.1.0) failed to load: "
        "RuntimeError: the sample billing backend is not configured (set SAMPLE_BILLING_URL)"
    ) in text, text
    assert "Traceback" not in text, text


def test_the_library_exports_what_it_lists_and_starts_nothing_at_import() -> None:
    """`wrenn_server.server` as a closed build imports it: every name of `__all__` is there, and the import
    starts no thread and opens no file or socket beyond those of Python's own imports."""
    code = (
        "import os, threading\n"
        "before = set(os.listdir('/proc/self/fd'))\n"
        "import wrenn_server.server as server\n"
        "missing = [name for name in server.__all__ if not hasattr(server, name)]\n"
        "print(missing, threading.active_count(), sorted(set(os.listdir('/proc/self/fd')) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[] 1 []"
