"""The host agent's capsule records on disk: an upgraded agent reads what the previous one wrote, and writes
the same."""

from __future__ import annotations

import json
from pathlib import Path

from wrenn_server.hostagent.layout import DataDir
from wrenn_server.hostagent.state import PausedMode, RecordStore, SandboxStatus

# A record as agents wrote it before states were enums (a checkpointed capsule from the warm pool).
WRITTEN_BEFORE = {
    "sandbox_id": "cl-0123456789abcdef0123456789abcdef",
    "runtime": "gvisor",
    "slot": 7,
    "template": "minimal",
    "template_id": "",
    "team_id": "",
    "template_dir": "/var/lib/wrenn/images/minimal/v1",
    "vcpus": 1,
    "memory_mb": 512,
    "disk_size_mb": 5120,
    "timeout_sec": 300,
    "default_user": "user",
    "default_env": {"A": "1"},
    "status": "paused",
    "paused_mode": "checkpoint",
    "checkpoint_pending": False,
    "error": "",
    "created_at": 1.5,
    "runtime_id": "wp-0a1b2c3d4e5f",
    "released": False,
}


def test_records_written_by_the_previous_agent_load_and_save_unchanged(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    saved = data.capsule("wp-0a1b2c3d4e5f").record
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps(WRITTEN_BEFORE))
    store = RecordStore(data)

    [record] = store.load_all()
    assert record.status is SandboxStatus.PAUSED and record.paused_mode is PausedMode.CHECKPOINT
    assert record.checkpointed and record.name == "wp-0a1b2c3d4e5f"

    store.save(record)
    written = json.loads(saved.read_text())
    # What the old agent wrote is kept as it was; fields added since (`snapshotting`) come with their defaults.
    assert {key: written[key] for key in WRITTEN_BEFORE} == WRITTEN_BEFORE
    assert {key: value for key, value in written.items() if key not in WRITTEN_BEFORE} == {"snapshotting": ""}
    record.set_running()
    store.save(record)
    again = json.loads(saved.read_text())
    assert (again["status"], again["paused_mode"]) == ("running", "")
