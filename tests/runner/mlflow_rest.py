"""A small MLflow REST server on loopback, for tests that need no MLflow install.

It answers the four calls the runner makes (experiment by name, experiment create, run
search by ``job_id`` tag, run create) the way MLflow's tracking server does, keeps what it
was sent, and can be told to fail. The real server is exercised by the opt-in tests in
``test_real_swift_tracking.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/api/2.0/mlflow"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class MlflowState:
    experiments: dict[str, str] = field(default_factory=lambda: {"Default": "0"})
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    #: An HTTP status every call answers with, instead of working.
    fail_with: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: MlflowState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        request = Request(method, parts.path, parse_qs(parts.query), body, dict(self.headers))
        state = self.state
        with state.lock:
            state.requests.append(request)
            if state.fail_with is not None:
                self._answer(state.fail_with, {"error_code": "INTERNAL_ERROR", "message": "no"})
                return
            status, answer = _route(state, request)
        self._answer(status, answer)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


def _route(state: MlflowState, request: Request) -> tuple[int, dict[str, Any]]:
    path = request.path.removeprefix(API)
    if request.method == "GET" and path == "/experiments/get-by-name":
        name = request.query.get("experiment_name", [""])[0]
        if name not in state.experiments:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": name}
        return 200, {"experiment": {"experiment_id": state.experiments[name], "name": name}}
    if request.method == "POST" and path == "/experiments/create":
        experiment_id = str(len(state.experiments))
        state.experiments[request.body["name"]] = experiment_id
        return 200, {"experiment_id": experiment_id}
    if request.method == "POST" and path == "/runs/search":
        match = re.fullmatch(r"tags\.job_id = '(.*)'", request.body.get("filter", ""))
        wanted = match.group(1) if match else None
        found = [
            r
            for r in reversed(state.runs)
            if r["info"]["experiment_id"] in request.body["experiment_ids"]
            and {"key": "job_id", "value": wanted} in r["data"]["tags"]
        ]
        return 200, {"runs": found[:1]} if found else {}
    if request.method == "POST" and path == "/runs/create":
        run_id = f"run{len(state.runs):028d}"
        info = {
            "run_id": run_id,
            "experiment_id": request.body["experiment_id"],
            "run_name": request.body.get("run_name"),
        }
        run = {"info": info, "data": {"tags": request.body.get("tags", [])}}
        state.runs.append(run)
        return 200, {"run": run}
    return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path}


@contextmanager
def mlflow_rest_server() -> Iterator[tuple[str, MlflowState]]:
    """``(tracking URI, state)`` of a server that stops when the block ends."""
    state = MlflowState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
