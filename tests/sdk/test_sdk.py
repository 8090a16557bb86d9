"""The official SDK, unchanged, drives the platform end to end (what a user's agent does)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wrenn import (
    Capsule,
    GitCommandError,
    WrennAuthenticationError,
    WrennClient,
    WrennConflictError,
    WrennError,
    WrennNotFoundError,
    WrennValidationError,
)
from wrenn.models import Status

from tests.stack import Stack
from wrenn_server.envd import __version__ as ENVD_VERSION
from wrenn_server.hostagent.runtimes import select_runtime

pytestmark = pytest.mark.sdk


def test_create_answers_running_without_polling(capsule: Capsule) -> None:
    assert capsule.capsule_id.startswith("cl-")
    info = capsule.get_info()
    assert info.status == Status.running
    assert info.template == "minimal"
    assert capsule.capsule_id in [c.id for c in Capsule.list()]


def test_disk_used_is_what_the_capsule_wrote(capsule: Capsule) -> None:
    before = capsule.get_info().disk_used_mb
    assert before is not None
    capsule.commands.run("head -c 6000000 /dev/urandom > /root/six-megabytes; sync")
    after = capsule.get_info().disk_used_mb
    assert after is not None and after - before >= 5
    capsule.commands.run("rm /root/six-megabytes")


def test_run_exit_codes_stderr_envs_cwd(capsule: Capsule) -> None:
    ok = capsule.commands.run("echo hello")
    assert (ok.stdout, ok.stderr, ok.exit_code) == ("hello\n", "", 0)
    failed = capsule.commands.run("echo oops >&2; exit 42")
    assert failed.exit_code == 42 and failed.stderr == "oops\n"
    env = capsule.commands.run('echo "$GREETING"; pwd', envs={"GREETING": "hi there"}, cwd="/usr/share")
    assert env.stdout == "hi there\n/usr/share\n"
    slow = capsule.commands.run("sleep 1")
    assert slow.duration_ms >= 900


def test_run_timeout_is_a_clear_error(capsule: Capsule) -> None:
    with pytest.raises(WrennError) as err:
        capsule.commands.run("sleep 20", timeout=1)
    assert err.value.code == "timeout"
    assert "timed out" in err.value.message
    assert capsule.commands.run("pgrep -x sleep || echo none").stdout.strip() == "none"


def test_binary_output_round_trips(capsule: Capsule) -> None:
    out = capsule.commands.run("printf 'caf\\303\\251 \\377\\376'")
    # Non-UTF-8 output arrives base64-encoded and the SDK decodes it (with replacement characters).
    assert out.stdout.startswith("café ")
    assert "\ufffd" in out.stdout


def test_background_list_and_kill(capsule: Capsule) -> None:
    handle = capsule.commands.run("sleep 300", background=True, tag="sleeper")
    assert handle.pid > 0 and handle.tag == "sleeper"
    listed = {p.tag: p for p in capsule.commands.list()}
    assert listed["sleeper"].pid == handle.pid
    default_tag = capsule.commands.run("sleep 300", background=True)
    assert default_tag.tag.startswith("proc-")
    capsule.commands.kill(handle.pid)
    capsule.commands.kill(default_tag.pid)
    assert not {"sleeper", default_tag.tag} & {p.tag for p in capsule.commands.list()}


def test_files_write_read_list_exists_mkdir_remove(capsule: Capsule) -> None:
    files = capsule.files
    files.write("/work/a/b/note.txt", "hello files")
    assert files.read("/work/a/b/note.txt") == "hello files"
    blob = os.urandom(3 * 1024 * 1024 + 11)
    files.write("/work/blob.bin", blob)
    assert files.read_bytes("/work/blob.bin") == blob
    names = sorted(e.path for e in files.list("/work", depth=3))
    assert names == ["/work/a", "/work/a/b", "/work/a/b/note.txt", "/work/blob.bin"]
    assert [e.name for e in files.list("/work", depth=1)] == ["a", "blob.bin"]
    assert files.exists("/work/blob.bin")
    assert not files.exists("/work/missing.txt")
    made = files.make_dir("/work/newdir")
    assert made.type == "directory"
    again = files.make_dir("/work/newdir")  # the SDK treats 409 conflict as "already there"
    assert again.path == "/work/newdir"
    files.remove("/work/a")
    assert not files.exists("/work/a")
    with pytest.raises(WrennNotFoundError):
        files.read("/work/a/b/note.txt")
    with pytest.raises(WrennNotFoundError):
        files.list("/nowhere")


def test_paths_never_leave_the_capsule(capsule: Capsule) -> None:
    """Every path, traversal included, resolves inside the capsule's own filesystem."""
    assert capsule.files.read("/../../../../etc/hostname") == "capsule\n"
    capsule.files.write("/../../../../tmp/escape.txt", "inside")
    assert capsule.commands.run("cat /tmp/escape.txt").stdout == "inside"
    assert not Path("/tmp/escape.txt").exists() or Path("/tmp/escape.txt").read_text() != "inside"


def test_streaming_upload_and_download(capsule: Capsule) -> None:
    chunks = [os.urandom(256 * 1024) for _ in range(20)]
    capsule.files.upload_stream("/stream/big.bin", iter(chunks))
    got = b"".join(capsule.files.download_stream("/stream/big.bin"))
    assert got == b"".join(chunks)
    assert capsule.commands.run("stat -c %s /stream/big.bin").stdout.strip() == str(len(got))


def test_git_over_exec(capsule: Capsule) -> None:
    capsule.commands.run("mkdir -p /repo")
    capsule.git.init("/repo", initial_branch="main")
    capsule.git.configure_user("Wrenn Test", "test@example.com")
    capsule.files.write("/repo/readme.md", "# hi\n")
    capsule.git.add(cwd="/repo", all=True)
    capsule.git.commit("first", cwd="/repo")
    status = capsule.git.status(cwd="/repo")
    assert status.branch == "main" and status.files == []


def test_git_branches_and_a_changed_tree(capsule: Capsule) -> None:
    """What an agent does with a repository: branch, see what changed, commit there, switch back and forth."""
    git, repo = capsule.git, "/branchy"
    capsule.commands.run(f"mkdir -p {repo}")
    git.init(repo, initial_branch="main")
    git.configure_user("Wrenn Test", "test@example.com")
    capsule.files.write(f"{repo}/a.txt", "one\n")
    git.add(cwd=repo, all=True)
    git.commit("first", cwd=repo)
    assert [(b.name, b.is_current) for b in git.branches(cwd=repo)] == [("main", True)]

    git.create_branch("feature", cwd=repo)
    assert sorted((b.name, b.is_current) for b in git.branches(cwd=repo)) == [("feature", True), ("main", False)]
    capsule.files.write(f"{repo}/a.txt", "two\n")
    capsule.files.write(f"{repo}/new.txt", "new\n")
    status = git.status(cwd=repo)
    assert status.branch == "feature" and not status.detached and status.upstream is None
    assert not status.is_clean and status.has_untracked and not status.has_staged
    assert sorted((f.path, f.status, f.staged) for f in status.files) == [
        ("a.txt", "modified", False),
        ("new.txt", "untracked", False),
    ]
    git.add(["a.txt"], cwd=repo)
    staged = git.status(cwd=repo)
    assert staged.has_staged
    assert sorted((f.path, f.status, f.staged) for f in staged.files) == [
        ("a.txt", "modified", True),
        ("new.txt", "untracked", False),
    ]
    git.commit("second, on feature", cwd=repo)

    # Back on main: the commit stays on its branch, the untracked file goes along.
    git.checkout_branch("main", cwd=repo)
    assert capsule.files.read(f"{repo}/a.txt") == "one\n"
    on_main = git.status(cwd=repo)
    assert on_main.branch == "main"
    assert [(f.path, f.status) for f in on_main.files] == [("new.txt", "untracked")]
    assert sorted((b.name, b.is_current) for b in git.branches(cwd=repo)) == [("feature", False), ("main", True)]
    git.checkout_branch("feature", cwd=repo)
    assert capsule.files.read(f"{repo}/a.txt") == "two\n"
    log = capsule.commands.run("git log --format=%s", cwd=repo).stdout
    assert log == "second, on feature\nfirst\n"

    git.checkout_branch("main", cwd=repo)
    with pytest.raises(GitCommandError) as unmerged:  # its commit is on no other branch: git refuses
        git.delete_branch("feature", cwd=repo)
    assert unmerged.value.exit_code != 0 and "not fully merged" in unmerged.value.message
    with pytest.raises(GitCommandError):
        git.checkout_branch("no-such-branch", cwd=repo)
    git.delete_branch("feature", force=True, cwd=repo)
    assert [(b.name, b.is_current) for b in git.branches(cwd=repo)] == [("main", True)]


def test_bad_input_maps_to_sdk_errors(stack: Stack, capsule: Capsule) -> None:
    # Through the client rather than Capsule(...): the SDK's constructor leaks its HTTP client when it raises.
    with WrennClient() as client:
        with pytest.raises(WrennNotFoundError):
            client.capsules.get("cl-" + "0" * 25)
        with pytest.raises(WrennValidationError):
            client.capsules.get("not-an-id")
        with pytest.raises(WrennValidationError):
            client.capsules.create(template="../etc")
        with pytest.raises(WrennNotFoundError):
            client.capsules.create(template="no-such-template")
        with pytest.raises(WrennValidationError):
            client.capsules.create(vcpus=4096)
    with WrennClient(api_key="wrn_" + "0" * 32) as stranger, pytest.raises(WrennAuthenticationError):
        stranger.capsules.list()


def test_destroy_then_gone(stack: Stack) -> None:
    with Capsule() as box:  # leaving the block destroys it once more: idempotent
        box.commands.run("true")
        box.destroy(wait=True)
        assert box.capsule_id not in [c.id for c in Capsule.list()]
        assert box.get_info().status == Status.stopped
        with pytest.raises(WrennConflictError):
            box.commands.run("true")


def test_capsules_survive_a_restart_of_wrenn_up(stack: Stack) -> None:
    with Capsule() as box:
        box.commands.run("echo survived > /root/mark")
        handle = box.commands.run("sleep 600", background=True, tag="long")
        stack.stop()
        stack.start()
        with Capsule.connect(box.capsule_id) as again:
            assert again.get_info().status == Status.running
            assert again.commands.run("cat /root/mark").stdout == "survived\n"
            assert handle.pid in [p.pid for p in again.commands.list()]


def test_creates_are_served_by_the_warm_pool_and_doctor_counts_them(stack: Stack) -> None:
    """A create takes a guest the agent restored in advance; `wrenn doctor` shows the agent's pool."""
    starts = []
    deadline = time.monotonic() + 60
    while "pool" not in starts:  # the pool refills in the background after each create
        assert time.monotonic() < deadline, f"no create was served by the pool: {starts}"
        with Capsule() as box:
            info = box.get_info()
            starts.append(info.metadata["start"])
            assert info.metadata["envd_version"] == ENVD_VERSION  # what the guest's envd said, however it came up
            assert box.commands.run("cat /run/wrenn/.WRENN_SANDBOX_ID").stdout == f"{box.capsule_id}\n"
        time.sleep(0.5)
    assert set(starts) <= {"pool", "restore", "boot"}
    env = {
        **os.environ,
        "WRENN_DIR": str(stack.data_dir),
        "WRENN_HOST_LISTEN_ADDR": f"127.0.0.1:{stack.agent_port}",
        "COLUMNS": "250",
    }
    runtime = stack.extra_env.get("WRENN_RUNTIME") or asyncio.run(select_runtime("auto", stack.data_dir)).name
    deadline = time.monotonic() + 30
    while True:  # the agent tells doctor what it did every few seconds (agent-status.json)
        doctor = subprocess.run(
            [sys.executable, "-m", "wrenn_server.cli", "doctor"], env=env, capture_output=True, text=True, check=True
        )
        agent_row = next(line for line in doctor.stdout.splitlines() if "host agent" in line)
        hits = int(agent_row.split("hits ")[1].split(",")[0]) if "hits " in agent_row else 0
        if hits >= 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "yes" in agent_row and f"runtime {runtime}" in agent_row
    assert hits >= 1, agent_row
