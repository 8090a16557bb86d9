"""Port forwarding: a service listening only on loopback inside the capsule becomes reachable at the capsule's
own address, through a byte relay in envd, for as long as its listener exists."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
from asyncio import StreamReader, StreamWriter
from functools import partial

log = logging.getLogger("envd")

SCAN_EVERY = 1.0
SIOCGIFADDR = 0x8915
LISTEN = "0A"
# /proc/net/tcp* print addresses as host-order 32-bit words in hex.
_LOOPBACK = {
    "0100007F": "127.0.0.1",
    "0000000000000000FFFF00000100007F": "127.0.0.1",  # ::ffff:127.0.0.1
    "00000000000000000000000001000000": "::1",
}


def loopback_listeners() -> dict[int, str]:
    """Ports with a listening socket on loopback, each with the loopback address to relay to."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp6", "/proc/net/tcp"):  # IPv4 last: 127.0.0.1 wins over ::1
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            if len(row) > 3 and row[3] == LISTEN:
                address, _, port = row[1].partition(":")
                if address in _LOOPBACK:
                    found[int(port, 16)] = _LOOPBACK[address]
    return found


def default_route_address() -> str | None:
    """IPv4 address of the interface carrying the default route, if there is one."""
    try:
        with open("/proc/net/route") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        iface = next(row[0] for row in rows if len(row) > 7 and row[1] == "00000000" and row[7] == "00000000")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    except (OSError, StopIteration):
        return None


def _nodelay(writer: StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(src: StreamReader, dst: StreamWriter, other: StreamWriter) -> None:
    try:
        while data := await src.read(64 * 1024):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()  # pass the half-close on; the other direction may still be talking
    except OSError:
        # One side broke: drop both, which also ends the pipe running the other way.
        dst.transport.abort()
        other.transport.abort()


class PortForwarder:
    def __init__(self, address: str | None, exclude: set[int]) -> None:
        self._fixed = address  # None: follow the default-route address
        self._exclude = exclude
        self._address: str | None = None
        self._servers: dict[int, asyncio.Server] = {}
        self._failed: set[int] = set()  # ports we could not bind, left alone until their listener goes
        self._relays: set[StreamWriter] = set()
        self._suspended = False

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as exc:  # a failed scan must not end forwarding for good
                log.warning("port scan failed: %s", exc)
            await asyncio.sleep(SCAN_EVERY)

    def suspend(self) -> None:
        """Stop forwarding and drop every relayed connection (with a reset): a checkpoint comes next."""
        self._suspended = True
        self.close()
        for writer in list(self._relays):
            writer.transport.abort()
        self._relays.clear()

    def unsuspend(self) -> None:
        self._suspended = False

    async def scan(self) -> None:
        if self._suspended:
            return
        address = self._fixed or default_route_address()
        if address != self._address:
            self.close()
            self._address = address
        listeners = {p: target for p, target in loopback_listeners().items() if p not in self._exclude}
        for port in [p for p in self._servers if p not in listeners]:
            self._servers.pop(port).close()
        self._failed.intersection_update(listeners)
        if address is None:
            return
        for port, target in listeners.items():
            if port in self._servers or port in self._failed:
                continue
            try:
                relay = partial(self._relay, target, port)
                self._servers[port] = await asyncio.start_server(relay, address, port)
            except OSError:
                self._failed.add(port)  # something already answers on this address and port

    async def _relay(self, target: str, port: int, reader: StreamReader, writer: StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target, port)
        except OSError:
            writer.transport.abort()
            return
        _nodelay(writer)
        _nodelay(up_writer)
        self._relays.add(writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer, writer), _pipe(up_reader, writer, up_writer))
        finally:
            self._relays.discard(writer)
            writer.close()
            up_writer.close()

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        self._failed.clear()
        self._address = None

