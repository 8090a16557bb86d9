"""Port forwarding: a service on 127.0.0.1 becomes reachable at the forward address (127.0.0.2 in tests)."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from .conftest import FORWARD_ADDR, free_port


async def _get(url: str) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return await http.get(url)
    except httpx.TransportError:
        return None


async def _listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_loopback_service_is_forwarded_while_it_listens(client: httpx.AsyncClient) -> None:
    port = free_port()
    started = await client.post(
        "/process/start",
        json={
            "cmd": sys.executable,
            "args": ["-m", "http.server", "--bind", "127.0.0.1", str(port)],
            "cwd": "/",
            "mode": "background",
        },
    )
    assert started.status_code == 200
    pid = started.json()["pid"]
    url = f"http://{FORWARD_ADDR}:{port}/"
    try:
        deadline = time.monotonic() + 10
        while (response := await _get(url)) is None:
            assert time.monotonic() < deadline, "port was never forwarded"
            await asyncio.sleep(0.2)
        assert response.status_code == 200 and b"Directory listing" in response.content
    finally:
        await client.post("/process/signal", json={"pid": pid, "signal": "SIGKILL"})
    deadline = time.monotonic() + 10
    while await _listening(FORWARD_ADDR, port):
        assert time.monotonic() < deadline, "forward outlived the service"
        await asyncio.sleep(0.2)
