"""/fs/* and /files: entry info, listing, mkdir, move, remove, streamed upload and download."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest


async def test_chunked_binary_upload_round_trip(client: httpx.AsyncClient, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    target = tmp_path / "a" / "b" / "blob.bin"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    response = await client.put("/files", params={"path": str(target)}, content=chunks())
    assert response.status_code == 200, response.text
    entry = response.json()
    assert (entry["path"], entry["name"], entry["type"], entry["size"]) == (
        str(target),
        "blob.bin",
        "file",
        len(data),
    )
    assert entry["permissions"] == "-rw-r--r--" and entry["mode"] == 0o644
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["blob.bin"]  # no temporary file left behind

    response = await client.get("/files", params={"path": str(target)})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data

    # Overwriting keeps the file's mode.
    target.chmod(0o600)
    assert (await client.put("/files", params={"path": str(target)}, content=b"new")).json()["mode"] == 0o600
    assert target.read_bytes() == b"new"


async def test_stat_file_dir_and_symlink(client: httpx.AsyncClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "link").symlink_to("f")
    entry = (await client.post("/fs/stat", json={"path": str(tmp_path / "f")})).json()
    assert (
        entry["type"] == "file"
        and entry["size"] == 5
        and entry["owner"] == "root"
        and entry["group"] == "root"
    )
    assert entry["modified_at"] == int((tmp_path / "f").stat().st_mtime) and "symlink_target" not in entry
    link = (await client.post("/fs/stat", json={"path": str(tmp_path / "link")})).json()
    assert (link["type"], link["symlink_target"]) == ("symlink", "f")
    assert (await client.post("/fs/stat", json={"path": str(tmp_path)})).json()["type"] == "directory"


async def test_list_with_depth(client: httpx.AsyncClient, tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "deep").write_text("x")
    (tmp_path / "b").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "inside").write_text("x")
    (tmp_path / "lnk").symlink_to(tmp_path / "real")

    async def paths(depth: int | None) -> list[str]:
        body = {"path": str(tmp_path)} | ({"depth": depth} if depth is not None else {})
        response = await client.post("/fs/list", json=body)
        assert response.status_code == 200
        return [os.path.relpath(e["path"], tmp_path) for e in response.json()["entries"]]

    assert await paths(None) == await paths(0) == await paths(1) == ["b", "d", "lnk", "real"]
    assert await paths(2) == [
        "b",
        "d",
        "d/e",
        "lnk",
        "real",
        "real/inside",
    ]  # the symlinked dir is not entered
    assert await paths(5) == ["b", "d", "d/e", "d/e/deep", "lnk", "real", "real/inside"]


async def test_mkdir_move_remove(client: httpx.AsyncClient, tmp_path: Path) -> None:
    made = await client.post("/fs/mkdir", json={"path": str(tmp_path / "x" / "y")})
    assert made.status_code == 200 and made.json()["entry"]["type"] == "directory"
    again = await client.post("/fs/mkdir", json={"path": str(tmp_path / "x" / "y")})
    assert (again.status_code, again.json()["code"]) == (409, "conflict")

    (tmp_path / "x" / "y" / "f").write_text("hi")
    moved = await client.post(
        "/fs/move", json={"source": str(tmp_path / "x"), "destination": str(tmp_path / "z" / "w")}
    )
    assert moved.status_code == 200 and moved.json()["entry"]["path"] == str(tmp_path / "z" / "w")
    assert (tmp_path / "z" / "w" / "y" / "f").read_text() == "hi" and not (tmp_path / "x").exists()

    assert (await client.post("/fs/remove", json={"path": str(tmp_path / "z")})).status_code == 204
    assert not (tmp_path / "z").exists()
    (tmp_path / "file").write_text("x")
    assert (await client.post("/fs/remove", json={"path": str(tmp_path / "file")})).status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/files", None),
        ("POST", "/fs/list", {}),
        ("POST", "/fs/stat", {}),
        ("POST", "/fs/remove", {}),
        ("POST", "/fs/move", {"destination": "/tmp/never-written-by-envd-tests"}),
    ],
)
async def test_missing_path_is_404(
    client: httpx.AsyncClient, tmp_path: Path, method: str, path: str, body: dict[str, str] | None
) -> None:
    missing = str(tmp_path / "missing")
    if body is None:
        response = await client.request(method, path, params={"path": missing})
    else:
        response = await client.request(method, path, json={"path": missing, "source": missing, **body})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert missing in response.json()["message"]


async def test_directory_and_file_mixups(client: httpx.AsyncClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    read_dir = await client.get("/files", params={"path": str(tmp_path)})
    assert (read_dir.status_code, read_dir.json()["code"]) == (400, "invalid_request")
    write_dir = await client.put("/files", params={"path": str(tmp_path)}, content=b"data")
    assert (write_dir.status_code, write_dir.json()["code"]) == (409, "conflict")
    list_file = await client.post("/fs/list", json={"path": str(tmp_path / "f")})
    assert (list_file.status_code, list_file.json()["code"]) == (400, "invalid_request")
    no_path = await client.get("/files")
    assert no_path.status_code == 400
    # The connection is still usable after answering before reading a whole upload.
    assert (await client.get("/health")).status_code == 200
