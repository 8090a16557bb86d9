"""Routing, the service routes (/health, /init, /envs, /metrics), and the one place errors become answers."""

from __future__ import annotations

import logging
import os

from . import __version__, files, process_routes
from .errors import EnvdError, InvalidRequest, NotFound, from_os_error
from .http import Handler, ProtocolError, Request, Response, abort_connections, json_response
from .metrics import Metrics
from .params import opt_str, read_json, str_map
from .ports import PortForwarder
from .processes import ProcessTable
from .users import Defaults, User

log = logging.getLogger("envd")

SANDBOX_ID_FILE = "/run/wrenn/.WRENN_SANDBOX_ID"  # written by wrenn-init at boot


class App:
    def __init__(self, defaults: Defaults, processes: ProcessTable, metrics: Metrics, forwarder: PortForwarder) -> None:
        self.defaults = defaults
        self.metrics = metrics
        self.forwarder = forwarder
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self.health,
            ("POST", "/snapshot/prepare"): self.prepare,
            ("POST", "/snapshot/resume"): self.resume,
            ("POST", "/init"): self.init,
            ("GET", "/envs"): self.envs,
            ("GET", "/metrics"): self.sample_metrics,
            **process_routes.routes(defaults, processes),
            **files.routes(defaults),
        }

    async def __call__(self, request: Request) -> Response:
        try:
            handler = self.routes.get((request.method, request.path))
            if handler is None:
                raise NotFound(f"no such endpoint: {request.method} {request.path}")
            return await handler(request)
        except EnvdError as exc:
            error = exc
        except (ProtocolError, EOFError, ConnectionError):
            raise  # the connection broke: nobody is left to answer
        except OSError as exc:
            error = from_os_error(exc)
        except Exception as exc:  # the contract promises a JSON error, never a traceback
            error = EnvdError(f"internal error: {exc!r}")
        if error.status >= 500:
            log.error("%s %s: %s", request.method, request.path, error.message)
        return json_response({"code": error.code, "message": error.message}, error.status)

    async def health(self, request: Request) -> Response:
        return json_response({"version": __version__})

    async def init(self, request: Request) -> Response:
        body = await read_json(request)
        user, workdir = opt_str(body, "defaultUser"), opt_str(body, "defaultWorkdir")
        env = str_map(body, "envVars") if "envVars" in body else None
        if user:
            User.lookup(user)
        if workdir and not os.path.isabs(workdir):
            raise InvalidRequest("'defaultWorkdir' must be an absolute path")
        self.defaults.user = user or self.defaults.user
        self.defaults.env = self.defaults.env if env is None else env
        self.defaults.workdir = os.path.normpath(workdir) if workdir else self.defaults.workdir
        self.forwarder.unsuspend()  # the capsule starts serving (a checkpoint is taken with forwarding off)
        if sandbox_id := opt_str(body, "sandboxId"):
            # A guest restored from a checkpoint (or taken from the warm pool) was started under another id.
            with open(SANDBOX_ID_FILE, "w") as f:
                f.write(sandbox_id + "\n")
        return Response(204)

    async def prepare(self, request: Request) -> Response:
        """Before a checkpoint: stop port forwarding and reset every other client's connection (the caller
        resets this one), so that no TCP connection of envd's is left open in the guest."""
        self.forwarder.suspend()
        abort_connections(request)
        return Response(204)

    async def resume(self, request: Request) -> Response:
        """After a restore, or when the checkpoint did not happen: forward ports again."""
        self.forwarder.unsuspend()
        return Response(204)

    async def envs(self, request: Request) -> Response:
        return json_response(self.defaults.env)

    async def sample_metrics(self, request: Request) -> Response:
        return json_response(self.metrics.sample())
