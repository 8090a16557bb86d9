"""Snapshot templates through the SDK: a new capsule continues the source's files and running processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wrenn import Capsule, WrennClient


@pytest.fixture(scope="module")
def client() -> Iterator[WrennClient]:
    from wrenn import WrennClient

    with WrennClient() as c:
        yield c


# The count is renamed into place: a pause between `>` truncating the file and echo writing it would
# otherwise leave it empty for the next read.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.next; mv /tmp/count.next /tmp/count; sleep 0.1; done"


def count(box: Capsule) -> int:
    return int(box.commands.run("cat /tmp/count").stdout)


def test_a_capsule_from_a_snapshot_continues_files_and_processes(capsule: Capsule, client: WrennClient) -> None:
    from wrenn import Capsule
    from wrenn.exceptions import WrennError, WrennForbiddenError, WrennNotFoundError

    name = f"snap-{uuid.uuid4().hex[:8]}"
    capsule.files.write("/root/from-source.txt", "source file")
    counter = capsule.commands.run(COUNTER, background=True, tag="counter")
    time.sleep(0.3)
    template = capsule.create_snapshot(name)
    assert template.name == name and str(template.type) in ("snapshot", "Type.snapshot", "TemplateType.snapshot")
    assert (template.size_bytes or 0) > 0
    # The source goes on.
    before = count(capsule)
    time.sleep(0.3)
    assert count(capsule) > before
    with Capsule(template=name) as child:
        assert child.files.read("/root/from-source.txt") == "source file"
        assert counter.pid in [p.pid for p in child.commands.list()], "the running process came along"
        first = count(child)
        time.sleep(0.3)
        assert count(child) > first, "the process runs on in the new capsule"
        child.files.write("/root/from-source.txt", "changed in the child")
        assert capsule.files.read("/root/from-source.txt") == "source file"
        with pytest.raises(WrennError) as taken:
            capsule.create_snapshot(name)  # taken, no overwrite
        assert (taken.value.status_code, taken.value.code) == (409, "template_name_taken")
        assert capsule.create_snapshot(name, overwrite=True).name == name
        assert name in [t.name for t in client.snapshots.list(type="snapshot")]
        bases = {t.name: t for t in client.snapshots.list(type="base")}
        assert bases["minimal"].platform
        client.snapshots.delete(name)
        assert name not in [t.name for t in client.snapshots.list()]
        assert child.commands.run("echo alive").stdout == "alive\n", "deleting the template broke its capsule"
    with pytest.raises(WrennNotFoundError):
        Capsule(template=name)
    with pytest.raises(WrennForbiddenError):
        client.snapshots.delete("minimal")


def test_snapshot_of_a_missing_capsule_is_404(client: WrennClient) -> None:
    from wrenn.exceptions import WrennNotFoundError

    with pytest.raises(WrennNotFoundError):
        client.snapshots.create("cl-" + "1" * 25)
