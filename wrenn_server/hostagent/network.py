"""Per-capsule networking.

Each capsule gets two namespaces. The capsule namespace `wrenn-cns-N` holds only `eth0` with the fixed guest
address 169.254.0.21/30, so a checkpoint taken in one slot restores in any other. The router namespace
`wrenn-ns-N` sits between it and the host: it DNATs the capsule's unique host-reachable address
(10.11.0.0 + N) to the guest and SNATs the guest's egress to its veth address (10.12.0.0 + 2N + 1). The host
masquerades that range out of its default interface and drops traffic between capsules and from capsules to
the host itself.

Slots are machine-wide: several agents may share a machine (tests, a second data directory), so a slot is
taken by creating `/run/wrenn/slots/<N>` exclusively, holding the owning data directory. An agent reclaims only
its own slots, those of a data directory that is gone, and namespaces that no slot file claims at all; it never
removes the namespaces or link of a slot another agent holds, and never takes a number whose namespaces exist
(docs/lifecycle.md, "Several agents on one machine").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import proc, tcpreset
from .errors import NoCapacity
from .runtimes.base import GuestNetwork
from .tcpreset import Connection

log = logging.getLogger(__name__)

GUEST_ADDRESS = "169.254.0.21"
GUEST_GATEWAY = "169.254.0.22"
GUEST_PREFIX = 30
MAX_SLOTS = 32767
SLOTS_DIR = Path("/run/wrenn/slots")
_HOST_BASE = int(ipaddress.IPv4Address("10.11.0.0"))
_VETH_BASE = int(ipaddress.IPv4Address("10.12.0.0"))

HOST_RULES = """
table ip wrenn
delete table ip wrenn
table ip wrenn {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wrenn-v-*" oifname "wrenn-v-*" drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wrenn-v-*" ct state established,related accept
    iifname "wrenn-v-*" drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.12.0.0/16 oifname != "wrenn-v-*" masquerade
  }
}
"""


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def router_ns(self) -> str:
        return f"wrenn-ns-{self.index}"

    @property
    def capsule_ns(self) -> str:
        return f"wrenn-cns-{self.index}"

    @property
    def veth(self) -> str:
        return f"wrenn-v-{self.index}"  # interface names are at most 15 characters

    @property
    def host_ip(self) -> str:
        return str(ipaddress.IPv4Address(_HOST_BASE + self.index))

    @property
    def veth_host(self) -> str:
        return str(ipaddress.IPv4Address(_VETH_BASE + 2 * self.index))

    @property
    def veth_peer(self) -> str:
        return str(ipaddress.IPv4Address(_VETH_BASE + 2 * self.index + 1))

    @property
    def guest(self) -> GuestNetwork:
        return GuestNetwork(Path("/run/netns") / self.capsule_ns, GUEST_ADDRESS, GUEST_PREFIX, GUEST_GATEWAY)


class Network:
    """Allocates slots and builds or removes their namespaces, links and NAT rules."""

    def __init__(self, owner: str, slots_dir: Path = SLOTS_DIR, spare: int = 2) -> None:
        self._owner = owner
        self._slots = slots_dir
        self._used: set[int] = set()
        # Building a slot's namespaces takes ~30 ms of `ip`/`nft` work; a few are kept ready so that a create
        # does not wait for it. They are ordinary owned slots: a restarted agent reclaims them.
        self._spare = spare
        self._ready: list[Slot] = []
        self._refilling: asyncio.Task[None] | None = None

    async def acquire(self) -> Slot:
        """A slot whose namespaces are built, from the spares when there is one."""
        if self._ready:
            return self._ready.pop()
        slot = self.allocate()
        await self.setup(slot)
        return slot

    def refill(self) -> None:
        """Top up the spare slots in the background (call when the machine is not busy starting a capsule)."""
        if self._spare and (self._refilling is None or self._refilling.done()):
            self._refilling = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        while len(self._ready) < self._spare:
            slot = self.allocate()
            try:
                await self.setup(slot)
            except Exception:
                log.exception("could not prepare a spare network slot")
                return
            self._ready.append(slot)

    async def close(self) -> None:
        if self._refilling is not None:
            self._refilling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refilling
        while self._ready:
            await self.teardown(self._ready.pop())

    def _owner_of(self, index: int) -> str | None:
        try:
            return (self._slots / str(index)).read_text()
        except OSError:
            return None

    async def prepare_host(self, live_slots: set[int]) -> None:
        """Install the host rules; remove our own slots that no live capsule holds, and unclaimed leftovers."""
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        await proc.run(["nft", "-f", "-"], input=HOST_RULES.encode())
        self._slots.mkdir(parents=True, exist_ok=True)
        for index in live_slots:
            self.claim(index)
        for entry in self._slots.iterdir():
            if not entry.name.isdigit() or int(entry.name) in live_slots:
                continue
            owner = self._owner_of(int(entry.name))
            # An owner whose data directory is gone will never come back for its slot. Only a data directory
            # (an absolute path) can be judged gone: other owners (a bench's `bench-…`) clean up themselves.
            if owner == self._owner or (owner and owner.startswith("/") and not Path(owner).exists()):
                await self.teardown(Slot(int(entry.name)), force=True)
        listing = await proc.run(["ip", "netns", "list"])
        for line in listing.stdout.decode().splitlines():
            name = line.split()[0] if line.strip() else ""
            for prefix in ("wrenn-ns-", "wrenn-cns-"):
                suffix = name[len(prefix) :]
                if name.startswith(prefix) and suffix.isdigit() and self._owner_of(int(suffix)) is None:
                    log.info("reclaiming leftover namespace %s", name)
                    await proc.run(["ip", "netns", "del", name], check=False)

    def allocate(self) -> Slot:
        for index in range(1, MAX_SLOTS + 1):
            if index in self._used:
                continue
            try:
                fd = os.open(self._slots / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._owner)
            if _built(Slot(index)):  # someone's namespaces without a slot file: not ours to build over or remove
                (self._slots / str(index)).unlink(missing_ok=True)
                continue
            self._used.add(index)
            return Slot(index)
        raise NoCapacity("no free network slot on this host")

    def owns(self, index: int) -> bool:
        """Whether the slot is ours or free (its file is gone after a reboot of /run)."""
        return self._owner_of(index) in (None, self._owner)

    def claim(self, index: int) -> Slot:
        """Take back the slot of a re-adopted capsule."""
        self._slots.mkdir(parents=True, exist_ok=True)
        (self._slots / str(index)).write_text(self._owner)
        self._used.add(index)
        return Slot(index)

    async def setup(self, slot: Slot) -> None:
        try:
            await self._build(slot)
        except BaseException:  # cancelled too (an agent stopping while it refills its spares): nothing may leak
            await self.teardown(slot)
            raise

    async def _build(self, slot: Slot) -> None:
        n = slot.index
        host = f"""netns add {slot.router_ns}
netns add {slot.capsule_ns}
link add {slot.veth} type veth peer name eth0 netns {slot.router_ns}
addr add {slot.veth_host}/31 dev {slot.veth}
link set {slot.veth} up
"""
        router = f"""addr add {slot.veth_peer}/31 dev eth0
link set eth0 up
link set lo up
link add r0 type veth peer name eth0 netns {slot.capsule_ns}
addr add {GUEST_GATEWAY}/{GUEST_PREFIX} dev r0
link set r0 up
route add default via {slot.veth_host}
"""
        capsule = f"""addr add {GUEST_ADDRESS}/{GUEST_PREFIX} dev eth0
link set eth0 up
link set lo up
route add default via {GUEST_GATEWAY}
"""
        nat = f"""table ip wrenn {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; iifname "eth0" ip daddr {slot.host_ip} dnat to {GUEST_ADDRESS};
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; oifname "eth0" ip saddr {GUEST_ADDRESS} snat to {slot.veth_peer};
  }}
}}
"""
        await proc.run(["ip", "-batch", "-"], input=host.encode())
        await proc.run(["ip", "-n", slot.router_ns, "-batch", "-"], input=router.encode())
        await proc.run(["ip", "-n", slot.capsule_ns, "-batch", "-"], input=capsule.encode())
        await proc.run(
            [
                "ip",
                "netns",
                "exec",
                slot.router_ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward && exec nft -f -",
            ],
            input=nat.encode(),
        )
        await proc.run(["ip", "route", "add", f"{slot.host_ip}/32", "via", slot.veth_peer, "dev", slot.veth])
        log.debug("network slot %d ready", n)

    async def readdress(self, slot: Slot) -> None:
        """Give the capsule's eth0 its address back: runsc takes it away when it adopts the interface."""
        batch = f"addr replace {GUEST_ADDRESS}/{GUEST_PREFIX} dev eth0\nroute replace default via {GUEST_GATEWAY}\n"
        await proc.run(["ip", "-n", slot.capsule_ns, "-batch", "-"], input=batch.encode())

    async def tracked_connections(self, slot: Slot) -> list[tuple[Connection, str]]:
        """The guest's TCP connections on its link as its router's connection tracking saw them, each with its
        tracked state: every one of the last two minutes, closed ones too (tracking keeps TIME_WAIT longer
        than the guest does)."""
        done = await proc.run(["ip", "netns", "exec", slot.router_ns, "cat", "/proc/net/nf_conntrack"], check=False)
        return [c for line in done.stdout.decode().splitlines() if (c := _guest_connection(line))]

    async def end_tcp_connections(self, slot: Slot, connections: list[Connection]) -> list[Connection]:
        """End these TCP connections of the guest's, TIME_WAIT included, the way `ss -K` would on a host (see
        tcpreset.py); answers those it could not end."""
        if not connections:
            return []
        router, capsule = Path("/run/netns") / slot.router_ns, Path("/run/netns") / slot.capsule_ns
        # A thread of its own, ended afterwards: it moves into the capsule's namespaces.
        with concurrent.futures.ThreadPoolExecutor(1, "wrenn-tcpreset") as thread:
            call = functools.partial(tcpreset.end_all, router, capsule, GUEST_ADDRESS, connections)
            return await asyncio.get_running_loop().run_in_executor(thread, call)

    async def teardown(self, slot: Slot, force: bool = False) -> None:
        """Remove a slot of ours (`force`: a leftover being reclaimed). A slot whose file names another agent
        is that agent's now (ours was given up and taken again): its namespaces and link are left alone."""
        self._used.discard(slot.index)
        if not force and not self.owns(slot.index):
            log.warning("network slot %d belongs to another agent now; leaving it", slot.index)
            return
        for ns in (slot.capsule_ns, slot.router_ns):
            await proc.run(["ip", "netns", "del", ns], check=False)
        await proc.run(["ip", "link", "del", slot.veth], check=False)
        (self._slots / str(slot.index)).unlink(missing_ok=True)


def _guest_connection(line: str) -> tuple[Connection, str] | None:
    """(remote address, remote port, guest port) of a TCP connection tracked by the router, as the guest sees
    it (its original direction is the peer's, DNATed to the guest, or the guest's own, SNATed on the way out),
    and its tracked state."""
    fields = line.split()
    if len(fields) < 7 or fields[2] != "tcp":
        return None
    pairs = [f.split("=", 1) for f in fields if "=" in f]
    for tup in (dict(pairs[0:4]), dict(pairs[4:8])):
        if tup.get("src") == GUEST_ADDRESS:
            return (tup["dst"], int(tup["dport"]), int(tup["sport"])), fields[5]
    return None


def _built(slot: Slot) -> bool:
    return any((Path("/run/netns") / ns).exists() for ns in (slot.router_ns, slot.capsule_ns))
