"""The front doors of issue 15 against one real ``swift-trainer up``: a webhook registered by
the admin command receives a job's completion, signed; the audit of the live store verifies
and shows who did what; ``/asyncapi.json`` is served.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.e2e.live_service import Service, start_service, stop_service

from swift_trainer.cli import main
from swift_trainer.core import webhook_events as w

pytestmark = pytest.mark.timeout(180)

REGISTERED = "WebhookRegistered"


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append(({k.title(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.02")
    running = Service(process, base, tmp_path / "outputs")
    for name in ("EVENT_STORE_URL", "REDIS_URL", "REDIS_HOST", "WEBHOOK_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWIFT_TRAINER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SWIFT_TRAINER_URL", base)
    monkeypatch.setenv("SWIFT_TRAINER_CONFIG", str(tmp_path / "no-profiles.toml"))
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main([*argv, "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_webhook_audit_and_contract_on_a_live_service(
    service: Service,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, received = receiver
    added = _json(capsys, "webhooks", "add", url, "--id", "ci", "--event", "JobSucceeded")
    service.wait_for("GPUs", lambda: service.http.get("/gpus").json()["total"] == 2)
    final = _json(
        capsys,
        *("jobs", "submit", "--job-id", "e2e-1", "--data-path", "d#50", "--model-path", "m"),
        *("--train-arg", "max_steps=8", "--wait"),
    )
    assert final["status"] == "succeeded"

    service.wait_for("the webhook delivery", lambda: len(received) == 1, timeout=30)
    headers, body = received[0]
    assert w.verify_signature(added["secret"], headers, body, now=time.time())
    envelope = json.loads(body)
    assert (envelope["type"], envelope["event"]["job_id"]) == ("JobSucceeded", "e2e-1")
    trail = service.wait_for(
        "the delivery record",
        lambda: [
            e
            for e in _json(capsys, "webhooks", "deliveries", "ci")
            if e["type"] != "WebhookRegistered"
        ],
    )
    assert trail[0]["type"] == "WebhookDelivered"
    assert trail[0]["status_code"] == 204

    report = _json(capsys, "audit", "verify")
    assert report["ok"] is True
    assert report["events"] >= 8
    history = _json(capsys, "audit", "show", "e2e-1")
    actors = {entry["actor"] for entry in history}
    assert {"api", "scheduler"} <= actors
    assert all(entry["trace_id"] for entry in history if entry["actor"] == "api")

    contract = service.http.get(
        str(service.http.base_url).rstrip("/").removesuffix("/api/v1/training") + "/asyncapi.json"
    )
    assert contract.status_code == 200
    assert contract.json()["asyncapi"] == "3.0.0"
