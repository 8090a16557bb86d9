"""Schema fuzzing: schemathesis drives every operation of the control plane's own OpenAPI document over real
HTTP, with a valid API key, against the real host agent, and checks the contract on every answer.

Checks: no 5xx; every error is the contract body `{"error":{"code","message"}}` with the code its status
means (docs/api.md, "Errors"); the status, content type and body are ones the document declares; and data that breaks
the schema is refused with a 4xx.

Capsule routes are fuzzed three ways: on the module's running capsule (unless that would stop it for the
operations after), on a well-formed but unknown ID (the 404 paths) and on generated IDs (the 400 paths). A
few explicit cases per operation make sure the success answers are checked against the document as well.
Creating capsules boots real ones (in a team of their own, destroyed at the end); the event stream is read up
to its first event. Generation is derandomized and bounded: every run sends the same cases.
"""

from __future__ import annotations

import asyncio
import posixpath
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import Case, GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from wrenn_server.controlplane.ids import Kind, format_id

from .agent import Agent, agent_team
from .conftest import Running
from .harness import Harness, ServerThread

MAX_EXAMPLES = 12
UNKNOWN_CAPSULE = format_id(Kind.SANDBOX, uuid.UUID(int=1))

# Never sent the shared capsule: a paused or destroyed capsule would answer 409 to everything after.
NOT_ON_CAPSULE = {"DELETE /v1/capsules/{id}", "POST /v1/capsules/{id}/pause"}

# The contract's error codes by status (docs/api.md, "Errors"; `wrenn_server.controlplane.errors`).
ERROR_CODES = {
    400: {"invalid_request"},
    401: {"unauthorized"},
    403: {"forbidden"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    409: {"invalid_state", "conflict", "template_name_taken"},
    413: {"too_large"},
    503: {"no_hosts_available"},
}

# Top-level directories of the capsule its own processes (init, envd) live from: a fuzzed remove or upload
# there would turn every later call into an agent error that says nothing about the call that made it.
SYSTEM_DIRS = {"", "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "opt", "proc", "run", "sbin", "sys", "usr"}
# Programs that would take the shared capsule down (or fill it up) if a fuzzed command named them.
HARMFUL = {"dd", "halt", "init", "kill", "killall", "pkill", "poweroff", "reboot", "rm", "shutdown", "yes"}

# Explicit cases on the shared capsule, by operation: (request parts, the status the contract gives).
SCRATCH = "/tmp/fuzz-explicit"
EXPLICIT: dict[str, list[tuple[dict[str, Any], int]]] = {
    "GET /v1/capsules/stats": [({"query": {"range": "5m"}}, 200), ({"query": {"range": "2m"}}, 400)],
    "GET /v1/capsules/usage": [({"query": {"from": "2024-01-01", "to": "2024-01-02"}}, 200)],
    "GET /v1/capsules/{id}/metrics": [({"query": {"range": "10m"}}, 200)],
    "POST /v1/capsules": [({"body": {"template": "no-such-template"}}, 404), ({"body": {"vcpus": -1}}, 400)],
    "GET /v1/capsules/{id}": [({}, 200)],
    "POST /v1/capsules/{id}/exec": [
        ({"body": {"cmd": "echo", "args": ["fuzz"]}}, 200),
        ({"body": {"cmd": "/bin/sh", "args": ["-c", "printf '\\377'"]}}, 200),
        ({"body": {"cmd": "sleep", "args": ["300"], "background": True, "tag": "fuzz-bg"}}, 202),
        ({"body": {"cmd": "/no/such/program"}}, 404),
    ],
    "GET /v1/capsules/{id}/processes": [({}, 200)],
    "DELETE /v1/capsules/{id}/processes/{selector}": [
        ({"path_parameters": {"selector": "fuzz-bg"}}, 204),
        ({"path_parameters": {"selector": "no-such-tag"}}, 404),
    ],
    "POST /v1/capsules/{id}/files/write": [
        ({"body": {"path": f"{SCRATCH}/a.txt", "file": b"hello"}, "media_type": "multipart/form-data"}, 204)
    ],
    "POST /v1/capsules/{id}/files/stream/write": [
        ({"body": {"path": f"{SCRATCH}/b.bin", "file": b"\0\1\2"}, "media_type": "multipart/form-data"}, 204)
    ],
    "POST /v1/capsules/{id}/files/list": [({"body": {"path": SCRATCH, "depth": 2}}, 200)],
    "POST /v1/capsules/{id}/files/mkdir": [
        ({"body": {"path": f"{SCRATCH}/d"}}, 200),
        ({"body": {"path": f"{SCRATCH}/d"}}, 409),
    ],
    "POST /v1/capsules/{id}/files/remove": [({"body": {"path": SCRATCH}}, 204), ({"body": {"path": SCRATCH}}, 404)],
    "POST /v1/snapshots": [({"body": {"sandbox_id": UNKNOWN_CAPSULE}}, 404)],
    "DELETE /v1/snapshots/{name}": [({"path_parameters": {"name": "minimal"}}, 403)],
}
# Reads come after the writes that give them something to read (the document lists reads first).
EXPLICIT_AFTER = {
    "POST /v1/capsules/{id}/files/list": [
        ("POST /v1/capsules/{id}/files/read", {"body": {"path": f"{SCRATCH}/a.txt"}}, 200),
        ("POST /v1/capsules/{id}/files/stream/read", {"body": {"path": f"{SCRATCH}/b.bin"}}, 200),
    ]
}


def no_server_error(ctx: Any, response: Response, case: Case) -> None:
    if case.operation.label == "POST /v1/capsules" and response.status_code == 503:
        # The contract's answer once the fuzzed sizes no longer fit the (real) host: nothing failed.
        assert response.json()["error"]["code"] == "no_hosts_available", response.text
        return
    assert response.status_code < 500, f"{response.status_code}: {response.text[:2000]}"


def contract_error_body(ctx: Any, response: Response, case: Case) -> None:
    status = response.status_code
    if status < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{status} answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str) and error["message"], body
    assert error["code"] in ERROR_CODES.get(status, set()), f"{status} with code {error['code']!r}"
    assert "Traceback" not in error["message"], error["message"]


CHECKS = [
    no_server_error,
    contract_error_body,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def resolved(path: object) -> str:
    """Where envd puts a path: relative ones under the home directory."""
    return posixpath.normpath(posixpath.join("/root", path if isinstance(path, str) else ""))


def harmless(case: Case) -> bool:
    """Whether a case leaves the shared capsule working for the cases after it."""
    body = case.body if isinstance(case.body, dict) else {}
    if case.operation.path.endswith(("/files/remove", "/files/mkdir", "/files/write", "/files/stream/write")):
        return resolved(body.get("path")).split("/")[1] not in SYSTEM_DIRS
    if case.operation.path.endswith("/exec"):
        cmd = body.get("cmd")
        return not isinstance(cmd, str) or posixpath.basename(cmd) not in HARMFUL
    return True


def schema_media_types(operation: Any) -> set[str]:
    return set(operation.definition.raw.get("requestBody", {}).get("content", {}))


def anything(case: Case) -> bool:
    return True


@dataclass
class Fuzzer:
    """Sends the cases and checks the answers (in a worker thread: the agent serves from the test loop)."""

    base_url: str
    session: requests.Session = field(default_factory=requests.Session)
    failures: list[str] = field(default_factory=list)
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def check(self, name: str, case: Case, checks: list[Any]) -> Response:
        response = case.call(base_url=self.base_url, session=self.session)
        self.statuses[name].update([response.status_code])
        case.validate_response(response, checks=checks)
        return response

    def explicit(self, operation: Any, parts: dict[str, Any], status: int, headers: dict[str, str]) -> None:
        name = f"{operation.label} {parts}"
        case = operation.Case(**{**parts, "headers": headers})
        try:
            response = self.check(operation.label, case, CHECKS)
            assert response.status_code == status, f"{response.status_code}, not {status}: {response.text[:500]}"
        except (Exception, FailureGroup) as exc:
            self.failures.append(f"{name}: {exc}")

    def generated(
        self,
        operation: Any,
        mode: GenerationMode,
        headers: dict[str, str],
        path_parameters: dict[str, str] | None,
        accept: Callable[[Case], bool],
        name: str,
    ) -> None:
        # Multipart fields are text whatever the schema says, so a "number" there is a string the server may take.
        multipart = "multipart/form-data" in schema_media_types(operation)
        checks = [*CHECKS, negative_data_rejection] if mode.is_negative and not multipart else CHECKS
        strategy = operation.as_strategy(mode, headers=headers, path_parameters=path_parameters)

        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @given(case=strategy)
        def fuzz(case: Case) -> None:
            hypothesis.assume(accept(case))
            self.check(operation.label, case, checks)

        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:
            pass  # nothing to generate (no negative form of a parameterless operation, say)
        except (Exception, FailureGroup) as exc:
            self.failures.append(f"{name}: {exc}")


def variants(label: str, capsule: str) -> Iterator[tuple[str, dict[str, str] | None]]:
    """(name, fixed path parameters) to fuzz an operation with."""
    if not label.split()[1].startswith("/v1/capsules/{id}"):
        yield "", None
        return
    if label not in NOT_ON_CAPSULE:
        yield "capsule", {"id": capsule}
    yield "unknown id", {"id": UNKNOWN_CAPSULE}
    yield "generated id", None


async def test_schema_fuzz(
    server: ServerThread, harness: Harness, agent: Agent, running: Running, cleanup: list[str]
) -> None:
    capsule, headers = running
    # POST /v1/capsules boots real capsules: in a team of its own, so the shared capsule's list stays short.
    creator_team, creator_headers = await agent_team(harness, agent)
    config = schemathesis.Config.from_dict({"max-stream-events": 1})  # the event stream: `connected` only
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{server.base_url}/openapi.json", config=config)
    fuzzer = Fuzzer(server.base_url)
    labels: list[str] = []

    def fuzz_all() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            labels.append(operation.label)
            auth = creator_headers if operation.label == "POST /v1/capsules" else headers
            on_capsule = {"id": capsule} if "{id}" in operation.path else {}
            for parts, status in EXPLICIT.get(operation.label, []):
                parts = {**parts, "path_parameters": {**on_capsule, **parts.get("path_parameters", {})}}
                fuzzer.explicit(operation, parts, status, auth)
            for label, parts, status in EXPLICIT_AFTER.get(operation.label, []):
                fuzzer.explicit(
                    schema.find_operation_by_label(label), {**parts, "path_parameters": on_capsule}, status, headers
                )
            for variant, path_parameters in variants(operation.label, capsule):
                accept = harmless if variant == "capsule" else anything
                for mode in GenerationMode:
                    name = f"{operation.label} [{', '.join(filter(None, (variant, mode.value)))}]"
                    fuzzer.generated(operation, mode, auth, path_parameters, accept, name)

    try:
        await asyncio.to_thread(fuzz_all)
    finally:
        created = [format_id(Kind.SANDBOX, row.id) for row in await harness.rows(creator_team)]
        cleanup.extend(created)
        async with httpx.AsyncClient(base_url=server.base_url, headers=creator_headers, timeout=120) as http:
            destroyed = [(await http.delete(f"/v1/capsules/{wire_id}")).status_code for wire_id in created]
    assert destroyed == [204] * len(created)
    assert not set(created) & set(await agent.sandboxes())

    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    # Every operation of the document was sent, and the fuzzing reached past validation into real work.
    assert set(labels) == set(fuzzer.statuses) and len(labels) >= 29, sorted(set(labels) - set(fuzzer.statuses))
    assert fuzzer.statuses["POST /v1/capsules"][201] > 0, fuzzer.statuses["POST /v1/capsules"]
    for label in ("POST /v1/capsules/{id}/files/mkdir", "POST /v1/capsules/{id}/files/remove"):
        assert sum(n for status, n in fuzzer.statuses[label].items() if status < 300) > 1, fuzzer.statuses[label]
    # The shared capsule came through every case and still works.
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
        resp = await http.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "echo", "args": ["ok"]})
        assert resp.status_code == 200 and resp.json()["stdout"] == "ok\n", resp.text
