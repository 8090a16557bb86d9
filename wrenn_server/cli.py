"""The `wrenn` command: run the platform, build images, check the machine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .controlplane.settings import ControlPlaneSettings
    from .hostagent.runtimes.base import Capabilities
    from .hostagent.settings import AgentSettings
    from .images.builder import ImagePaths

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Wrenn: sandboxes for AI agents.")
image_app = typer.Typer(no_args_is_help=True, help="Guest images.")
app.add_typer(image_app, name="image")
console = Console(stderr=True)


def _data_dir() -> Path:
    return Path(os.environ.get("WRENN_DIR", "/var/lib/wrenn"))


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )


def build_image(force: bool = False) -> None:
    from .images.builder import BuildError, ImagePaths, build, is_current

    paths = ImagePaths(_data_dir())
    if not force and is_current(paths):
        console.print(f"image [bold]minimal[/] is up to date in {paths.template}")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("building image minimal", total=1.0)

        def report(message: str, fraction: float | None) -> None:
            bar.update(task, description=message[:70], completed=fraction)

        try:
            build(paths, report, force=force)
        except BuildError as exc:
            console.print(f"[red]image build failed:[/] {exc}")
            raise typer.Exit(1) from exc
    console.print(f"image [bold]minimal[/] ready in {paths.current.resolve()}")


@image_app.command("build")
def image_build(force: bool = typer.Option(False, help="Rebuild even when the inputs did not change.")) -> None:
    """Build (or reuse) the base image `minimal`: Debian bookworm + envd."""
    build_image(force)


@app.command()
def doctor() -> None:
    """Report what this machine can run, and why."""
    from .hostagent.kvm import probe_kvm
    from .hostagent.runtimes import RUNTIMES, NoRuntime, probe_all, select_runtime
    from .images.builder import ImagePaths, is_current

    table = Table(title="wrenn doctor", show_lines=False)
    table.add_column("check")
    table.add_column("ok")
    table.add_column("details")
    kvm = probe_kvm()
    table.add_row("hardware KVM", "yes" if kvm.usable else "no", kvm.reason)
    cgroup_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    table.add_row("cgroups", "yes", "v2" if cgroup_v2 else "v1 (memory, cpu, pids controllers)")
    netns = Path("/run/netns").exists() or os.geteuid() == 0
    table.add_row("network namespaces", "yes" if netns else "no", "ip netns, veth, nftables NAT")
    image = ImagePaths(_data_dir())
    table.add_row(
        "image minimal",
        "yes" if is_current(image) else "no",
        str(image.current) if is_current(image) else "run `wrenn image build`",
    )
    table.add_row("microVM image", *_vm_outputs(image))
    probes = asyncio.run(probe_all(_data_dir()))
    accelerator = probes["microvm"].details.get("accelerator", "tcg")
    table.add_row(
        "microVM accelerator",
        accelerator,
        "-accel kvm -cpu host (a guest kernel booted on it)"
        if accelerator == "kvm"
        else "software emulation (TCG): guests boot in seconds, run ~15x slower",
    )
    for name in RUNTIMES:
        p = probes[name]
        table.add_row(f"runtime {name}", "yes" if p.available else "no", p.reason)
        if p.available:
            table.add_row(f"  {name} can", "", _capabilities(p.capabilities))
    try:
        chosen = asyncio.run(select_runtime("auto", _data_dir())).name
    except NoRuntime as exc:
        chosen = f"none ({exc})"
    table.add_row("WRENN_RUNTIME=auto", "", f"would use {chosen}")
    running, details = asyncio.run(_agent_status())
    table.add_row("host agent", "yes" if running else "no", details)
    table.add_row("data directory", *_data_dir_privacy(_data_dir()))
    Console().print(table)


def _capabilities(capabilities: Capabilities) -> str:
    """What a runtime measured it can do here: each capability, yes or no, and whose snapshots it restores."""
    wire = capabilities.to_wire()
    can = [name for name, value in wire.items() if value is True]
    cannot = [name for name, value in wire.items() if value is False]
    restores = " ".join(sorted(capabilities.restores)) or "-"
    return f"yes: {' '.join(can) or '-'}; no: {' '.join(cannot) or '-'}; restores: {restores}"


def _data_dir_privacy(path: Path) -> tuple[str, str]:
    """Whether the data directory is for root alone (docs/containment.md, "Privileges")."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return "no", f"{path} does not exist yet"
    if mode & 0o077:
        return "no", f"{path} is {mode:o}: other users can read capsules' files (`wrenn up` makes it 700)"
    return "yes", f"{path} is {mode:o}: for root alone"


def _vm_outputs(image: ImagePaths) -> tuple[str, str]:
    """Whether the image carries the microVM kernel, initramfs and disk, and why not."""
    try:
        manifest = json.loads(image.manifest.read_text())
    except (OSError, ValueError):
        return "no", "run `wrenn image build`"
    if (image.current / "vm" / "vmlinux").is_file():
        return "yes", f"kernel {manifest.get('vm_kernel', '?')} in {image.current / 'vm'}"
    return "no", str(manifest.get("vm_error", "rebuild the image (`wrenn image build --force`)"))


async def _agent_status() -> tuple[bool, str]:
    """The host agent of this data directory, if it answers (its calls need the control plane's token)."""
    import grpc

    from .hostagent.registration import Credentials
    from .hostagent.settings import AgentSettings
    from .proto._generated import hostagent_pb2 as pb
    from .proto._generated import hostagent_pb2_grpc as pb_grpc

    settings = AgentSettings()
    creds = Credentials.load(settings.dir / "host-credentials.json")
    if creds is None:
        return False, "not registered here (`wrenn up` or `wrenn agent` registers it)"
    async with grpc.aio.insecure_channel(settings.host_listen_addr) as channel:
        try:
            stub = pb_grpc.HostAgentServiceStub(channel)  # type: ignore[no-untyped-call]
            await stub.Ping(pb.PingRequest(), timeout=3)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:
                return False, f"not answering on {settings.host_listen_addr}: {exc.code().name}"
    # Only the control plane holds the token its calls need (the agent keeps a hash of it): what the agent
    # says of itself is in a file of the data directory, written every few seconds.
    try:
        status = json.loads((settings.dir / "agent-status.json").read_text())
        pool = ", ".join(f"{name} {count}" for name, count in sorted(status["pool"].items()))
    except (OSError, ValueError, KeyError, AttributeError):
        return True, f"{settings.host_listen_addr}, host {creds.host_id} (it has not said more yet)"
    return True, f"{settings.host_listen_addr}, runtime {status['runtime']}; warm pool: {pool}"


@app.command()
def up() -> None:
    """Run the platform on this machine: control plane + local host agent (SQLite unless DATABASE_URL)."""
    from .controlplane.settings import ControlPlaneSettings
    from .hostagent.settings import AgentSettings

    cp_settings = ControlPlaneSettings()
    if "WRENN_TRANSITION_GRACE_SEC" not in os.environ:
        cp_settings.transition_grace_sec = 0.0  # no other control plane can be half-way through a pause
    agent_settings = AgentSettings()
    _logging(agent_settings.log_level)
    build_image()
    _serve(cp_settings, agent_settings)


def _serve(settings: ControlPlaneSettings, agent: AgentSettings | None = None) -> None:
    """`wrenn_server.server.run` with the installed extensions; one that fails to load is one line, exit 1."""
    from .server import ExtensionError, run

    try:
        run(settings, agent=agent)
    except ExtensionError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def agent() -> None:
    """Run a host agent that joins the control plane at WRENN_CP_URL."""
    from .hostagent.app import HostAgent
    from .hostagent.registration import RegistrationError
    from .hostagent.settings import AgentSettings

    settings = AgentSettings()
    _logging(settings.log_level)

    async def serve() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host_agent = HostAgent(settings)
        await host_agent.start()
        try:
            await stop.wait()
        finally:
            await host_agent.stop()

    try:
        asyncio.run(serve())
    except RegistrationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command("control-plane")
def control_plane() -> None:
    """Run only the control plane (host agents join it with `wrenn agent`)."""
    from .controlplane.settings import ControlPlaneSettings

    _serve(ControlPlaneSettings())


if __name__ == "__main__":
    app()
