"""Whether this machine has hardware KVM that can run a stock guest kernel.

`/dev/kvm` existing is not enough: some hosts expose a paravirtual KVM (e.g. `kvm_pvm`) that cannot run an
unmodified guest. We require the CPU's virtualisation flag and the matching kernel module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KvmProbe:
    usable: bool
    kind: str
    reason: str


def probe_kvm() -> KvmProbe:
    if not Path("/dev/kvm").exists():
        return KvmProbe(False, "none", "/dev/kvm does not exist")
    modules = {p.name for p in Path("/sys/module").iterdir() if p.name.startswith("kvm")}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "vmx" in flags and "kvm_intel" in modules:
        return KvmProbe(True, "kvm_intel", "hardware KVM (Intel VT-x)")
    if "svm" in flags and "kvm_amd" in modules:
        return KvmProbe(True, "kvm_amd", "hardware KVM (AMD-V)")
    other = ", ".join(sorted(modules - {"kvm"})) or "no vendor module"
    return KvmProbe(False, other, f"/dev/kvm is present but not hardware KVM ({other}); using emulation")
