"""Ending a gVisor guest's TCP connections from outside, as `ss -K` ends a host's, so that it can be checkpointed.

runsc (20221219) refuses to save a TCP endpoint that is connected, and TIME_WAIT counts as connected: after
one request to a web app in the capsule (the app closes first, so the guest holds TIME_WAIT for 60 s) no
snapshot or pause checkpoint could be taken for a minute or two. Nothing inside the guest can end those
endpoints (their sockets are closed already), so this module, from the capsule's router namespace, talks
TCP to them on the wire, from the link the guest is plugged into (frames sent on an AF_PACKET socket there
bypass the router's netfilter and connection tracking):

1. a bare ACK with a random sequence number, outside any window: a connected endpoint answers with an ACK
   carrying the next sequence number it expects (RFC 793 p. 69; RFC 5961's challenge ACK); no endpoint
   answers with a reset, and then there is nothing to do;
2. a reset at exactly that number: it aborts every synchronized state but TIME_WAIT (RFC 5961 §3);
3. a SYN just above it: a TIME_WAIT endpoint gives way to a new connection (RFC 1122 4.2.2.13; gVisor drops
   resets in TIME_WAIT, RFC 1337); the guest answers a SYN-ACK when a listener takes it, or a reset;
4. a reset at the SYN-ACK's expected number, which aborts the half-open connection just made (no answer at
   all: a TIME_WAIT endpoint with no listener on its port, which the caller gives one and asks again);
5. a last probe must be answered with a reset: the endpoint is gone.

Peers see the connection cut, as when a VM's snapshot copy starts with none. It runs on a thread of its own,
moved into the capsule's namespaces (no process to start: ~1 ms per connection).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import random
import select
import socket
import struct
import time
from pathlib import Path

Connection = tuple[str, int, int]  # the remote address and port, and the guest's port, of a guest's connection

ETH_P_IP = 0x0800
SIOCGIFHWADDR = 0x8927
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
SYN, RST, ACK = 0x02, 0x04, 0x10
ANSWER_WAIT = 0.2  # the guest answers in well under a millisecond; a lost frame costs this much
SYN_WAIT = 0.05  # a TIME_WAIT endpoint with no listener on its port drops the SYN: no answer comes
ROUNDS = 3


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def frame(
    macs: tuple[bytes, bytes], src: str, dst: str, ports: tuple[int, int], seq: int, ack: int, flags: int
) -> bytes:
    """An Ethernet frame (source and destination `macs`) holding one IPv4 TCP segment with no data."""
    (src_mac, dst_mac), (sport, dport) = macs, ports
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0, 64, socket.IPPROTO_TCP, 0, saddr, daddr
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp


class Link:
    """The router's side of the guest's link: sends frames to the guest, reads the guest's segments."""

    def __init__(self, iface: str, guest: str, guest_mac: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.bind((iface, ETH_P_IP))
        self.mac = _mac(self.sock, iface)
        self.guest, self.guest_mac = guest, guest_mac

    def close(self) -> None:
        self.sock.close()

    def send(self, peer: str, peer_port: int, guest_port: int, seq: int, ack: int, flags: int) -> None:
        self.sock.send(frame((self.mac, self.guest_mac), peer, self.guest, (peer_port, guest_port), seq, ack, flags))

    def answer(
        self, peer: str, peer_port: int, guest_port: int, wait: float = ANSWER_WAIT
    ) -> tuple[int, int, int] | None:
        """The guest's next segment on this connection: (flags, seq, ack), or None when it sends none."""
        want = (socket.inet_aton(self.guest), socket.inet_aton(peer), guest_port, peer_port)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                break
            data, address = self.sock.recvfrom(65535)
            if address[2] == socket.PACKET_OUTGOING or len(data) < 54:
                continue
            ip = data[14:]
            if ip[9] != socket.IPPROTO_TCP:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4 :]
            sport, dport, seq, ack, _, flags = struct.unpack("!HHIIBB", tcp[:14])
            if (ip[12:16], ip[16:20], sport, dport) == want:
                return flags, seq, ack
        return None

    def probe(self, peer: str, peer_port: int, guest_port: int) -> tuple[int, int, int] | None:
        self.send(peer, peer_port, guest_port, random.getrandbits(32), random.getrandbits(32), ACK)
        return self.answer(peer, peer_port, guest_port)


def end(link: Link, peer: str, peer_port: int, guest_port: int) -> bool:
    """End the guest's endpoint for this connection; True when the guest confirms none is left."""
    for _ in range(ROUNDS):
        answer = link.probe(peer, peer_port, guest_port)
        if answer is None:
            answer = link.probe(peer, peer_port, guest_port)  # rate-limited, or a frame lost: once more
        if answer is None:
            continue
        flags, _, expected = answer
        if flags & RST:
            return True
        link.send(peer, peer_port, guest_port, expected, 0, RST)
        link.send(peer, peer_port, guest_port, expected + 1, 0, SYN)
        reply = link.answer(peer, peer_port, guest_port, SYN_WAIT)
        if reply is None:
            break  # TIME_WAIT with no listener to take the SYN: the caller lends one (checkpoints.py)
        if reply[0] & (SYN | ACK) == SYN | ACK:
            link.send(peer, peer_port, guest_port, reply[2], 0, RST)
    answer = link.probe(peer, peer_port, guest_port)
    return answer is not None and bool(answer[0] & RST)


def _mac(sock: socket.socket, iface: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", iface.encode()))[18:24]


def _enter(namespace: Path) -> None:
    """Move the calling thread into the network namespace (os.setns needs Python 3.12; we support 3.11)."""
    with namespace.open() as f:
        if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(namespace))


def end_all(router: Path, capsule: Path, guest: str, connections: list[Connection]) -> list[Connection]:
    """End the guest's `connections` from its router's side of the link (`r0` in the namespace `router`; the
    guest's `eth0` is in `capsule`); answers those left. Moves the calling thread into those namespaces: call
    it on a thread of its own that ends afterwards."""
    _enter(capsule)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        guest_mac = _mac(probe, "eth0")
    _enter(router)
    link = Link("r0", guest, guest_mac)
    try:
        return [c for c in connections if not end(link, *c)]
    finally:
        link.close()
