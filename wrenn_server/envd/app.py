"""Routing, the service routes (/health, /init, /envs, /metrics), and the one place errors become answers."""

from __future__ import annotations

import logging
import os

from ..proto.envd import PROTOCOL_VERSION, Hello, InitRequest
from . import __version__, files, process_routes
from .errors import EnvdError, InvalidRequest, NotFound, from_os_error
from .http import Handler, ProtocolError, Request, Response, abort_connections, json_response
from .metrics import Metrics
from .params import answer, read_message
from .ports import PortForwarder
from .processes import ProcessTable
from .users import Defaults, User

log = logging.getLogger("envd")

SANDBOX_ID_FILE = "/run/wrenn/.WRENN_SANDBOX_ID"  # written by wrenn-init at boot
HELLO = Hello(__version__, PROTOCOL_VERSION)


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
        return answer(error.body(), error.status)

    async def health(self, request: Request) -> Response:
        return answer(HELLO)

    async def init(self, request: Request) -> Response:
        """Sets the defaults; answers who envd is, so the caller can check it speaks this protocol."""
        body = await read_message(request, InitRequest)
        user, workdir, env = body.default_user, body.default_workdir, body.env_vars
        if user:
            User.lookup(user)
        if workdir and not os.path.isabs(workdir):
            raise InvalidRequest("'defaultWorkdir' must be an absolute path")
        self.defaults.user = user or self.defaults.user
        self.defaults.env = self.defaults.env if env is None else env
        self.defaults.workdir = os.path.normpath(workdir) if workdir else self.defaults.workdir
        self.forwarder.unsuspend()  # the capsule starts serving (a checkpoint is taken with forwarding off)
        if sandbox_id := body.sandbox_id:
            # A guest restored from a checkpoint (or taken from the warm pool) was started under another id.
            with open(SANDBOX_ID_FILE, "w") as f:
                f.write(sandbox_id + "\n")
        return answer(HELLO)

    async def prepare(self, request: Request) -> Response:
        """Before a checkpoint: stop port forwarding and reset every other client's connection (the caller
        resets this one), so that no TCP connection of envd's is left open in the guest."""
        self.forwarder.suspend()
        abort_connections(request)
        return Response(204)

    async def resume(self, request: Request) -> Response:
        """After a restore, or when the checkpoint did not happen: forward ports again. Answers who envd is:
        a capsule resumed by a newer host agent than the one that paused it may run an envd it cannot speak to."""
        self.forwarder.unsuspend()
        return answer(HELLO)

    async def envs(self, request: Request) -> Response:
        return json_response(self.defaults.env)

    async def sample_metrics(self, request: Request) -> Response:
        return answer(self.metrics.sample())
