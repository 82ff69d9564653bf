"""Every terminal-client command against a live ``swift-trainer up`` (JSON output parsed).

One service for the module: a real ``up --simulate-gpus 2`` whose simulated trainings fail
at step 30 (``SWIFT_SIM_FAIL_AT_STEP``), so a 10-step job succeeds and a 50-step one fails.
The commands run in this process through ``cli.main``, as a user's shell would run them,
except the progress bar, which runs in a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_service import Service, start_service, stop_service

from swift_trainer.bus.embedded import free_port
from swift_trainer.cli import main

pytestmark = pytest.mark.timeout(240)

FOLLOW_EVENTS = ("jobs", "events", "cli-yaml", "-f", "-o", "json")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("client-up")
    process, base = start_service(
        data_dir,
        "--simulate-step-seconds",
        "0.02",
        env_extra={"SWIFT_SIM_FAIL_AT_STEP": "30"},
    )
    running = Service(process, base, data_dir / "outputs")
    try:
        running.wait_for("two GPUs", lambda: running.http.get("/gpus").json()["total"] == 2)
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


@pytest.fixture
def url(service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    base = str(service.http.base_url).rstrip("/").removesuffix("/api/v1/training")
    monkeypatch.setenv("SWIFT_TRAINER_URL", base)
    monkeypatch.setenv("SWIFT_TRAINER_CONFIG", str(tmp_path / "no-profiles.toml"))
    monkeypatch.delenv("SWIFT_TRAINER_PROFILE", raising=False)
    return base


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fits_80_columns_without_log_lines(out: str, err: str) -> None:
    assert max((len(line) for line in out.splitlines()), default=0) <= 80, out
    for noise in ("HTTP Request", "INFO", "httpx"):
        assert noise not in out + err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


def submit_flags(job_id: str, steps: int, *extra: str) -> list[str]:
    return [
        *("jobs", "submit", "--job-id", job_id, "--data-path", "d#100", "--model-path"),
        *("Qwen/Qwen2.5-0.5B", "--train-arg", f"max_steps={steps}"),
        *("--train-arg", "save_steps=5", *extra),
    ]


def test_submit_list_show_from_flags(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(
        capsys, *submit_flags("cli-flags", 10, "--priority", "7", "--hold", "--label", "team=cli")
    )
    assert (created["job_id"], created["status"]) == ("cli-flags", "held")
    listed = run_json(capsys, "jobs", "list", "--status", "held")
    assert "cli-flags" in [job["job_id"] for job in listed["items"]]
    labelled = run_json(capsys, "jobs", "list", "--label", "team=cli")
    assert [job["job_id"] for job in labelled["items"]] == ["cli-flags"]
    owned = run_json(capsys, "jobs", "list", "--label", "team=cli", "--owner", "nobody")
    assert owned["items"] == []  # jobs from a service without keys have no owner
    shown = run_json(capsys, "jobs", "show", "cli-flags")
    assert (shown["priority"], shown["train_args"]["max_steps"]) == (7, 10)
    code, out, err = run(capsys, "jobs", "list")
    assert code == 0
    assert "cli-flags" in out
    assert "held" in out
    fits_80_columns_without_log_lines(out, err)
    code, out, err = run(capsys, "jobs", "show", "cli-flags")
    assert code == 0
    assert "max_steps=10" in out
    assert "submitted_position" not in out
    fits_80_columns_without_log_lines(out, err)
    code, out, err = run(capsys, *submit_flags("cli-hint", 10, "--hold"))
    assert code == 0
    assert "start it with: swift-trainer jobs start cli-hint" in out
    assert "POST" not in out
    fits_80_columns_without_log_lines(out, err)


def test_submit_from_a_yaml_spec_and_wait_for_success(
    url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "job_id: cli-yaml\ndata_path: d#100\nmodel_path: Qwen/Qwen2.5-0.5B\n"
        "priority: 9\ntrain_args:\n  max_steps: 10\n  save_steps: 5\n",
        encoding="utf-8",
    )
    final = run_json(capsys, "jobs", "submit", "--file", str(spec), "--wait")
    assert (final["job_id"], final["status"]) == ("cli-yaml", "succeeded")
    assert final["progress"]["step"] == 10

    logs = run_json(capsys, "jobs", "logs", "cli-yaml", "--limit", "5")
    assert 0 < len(logs["lines"]) <= 5
    code, out, _ = run(capsys, "jobs", "logs", "cli-yaml", "-f", "-o", "json")
    assert code == 0
    followed = [json.loads(line) for line in out.splitlines()]
    assert followed and all("seq" in line for line in followed)

    events = run_json(capsys, "jobs", "events", "cli-yaml")
    types = [event["type"] for event in events["events"]]
    assert types[0] == "JobSubmitted"
    assert "JobSucceeded" in types
    # Events are followed until Ctrl-C (a finished job may be started again).
    follower = subprocess.Popen(
        [sys.executable, "-m", "swift_trainer.cli", *FOLLOW_EVENTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        followed_types = [json.loads(follower.stdout.readline())["type"] for _ in types]
        assert followed_types == types
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.communicate()
    code, out, _ = run(capsys, "jobs", "events", "cli-yaml")
    assert (code, "JobSucceeded" in out) == (0, True)

    exported = run_json(capsys, "jobs", "export", "cli-yaml")
    assert exported["job_id"] == "cli-yaml"
    assert exported["export_status"] in ("requested", "running", "succeeded")


def test_wait_exits_non_zero_when_the_job_fails(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *submit_flags("cli-fails", 50, "--wait"), "-o", "json")
    assert code == 1
    assert json.loads(out)["status"] == "failed"
    assert "job cli-fails ended failed" in err


def test_controls_priority_stop_start_delete(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_json(capsys, *submit_flags("cli-ctl", 10, "--hold"))
    answer = run_json(capsys, "jobs", "priority", "cli-ctl", "2")
    assert (answer["priority"], answer["changed"]) == (2, True)
    assert run_json(capsys, "jobs", "stop", "cli-ctl")["status"] == "stopped"
    assert run_json(capsys, "jobs", "start", "cli-ctl")["status"] == "queued"
    deadline = time.monotonic() + 60
    while run_json(capsys, "jobs", "show", "cli-ctl")["status"] != "succeeded":
        assert time.monotonic() < deadline, "cli-ctl did not finish"
        time.sleep(0.2)
    code, out, _ = run(capsys, "jobs", "delete", "cli-ctl")
    assert (code, out.strip()) == (0, "job cli-ctl deleted")
    code, out, err = run(capsys, "jobs", "show", "cli-ctl", "-o", "json")
    assert code == 1
    assert json.loads(out)["code"] == "job_not_found"
    assert "job_not_found, HTTP 404" in err


def test_pause_resume_cancel_report_the_servers_answer(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each verb against the live server: an accepted change exits 0, a refused one exits 1
    with the problem's message (cancel is final, so resume is then refused)."""
    created = run_json(capsys, *submit_flags("cli-prc", 10, "--hold"))
    assert created["status"] == "held"
    paused = run_json(capsys, "jobs", "pause", "cli-prc")
    assert paused["job_id"] == "cli-prc"
    assert run_json(capsys, "jobs", "show", "cli-prc")["status"] == "paused"
    code, _, _ = run(capsys, "jobs", "cancel", "cli-prc")
    assert code == 0
    assert run_json(capsys, "jobs", "show", "cli-prc")["status"] == "cancelled"
    code, out, err = run(capsys, "jobs", "resume", "cli-prc", "-o", "json")
    assert code == 1
    assert json.loads(out)["code"] == "invalid_transition"
    assert "error:" in err
    assert "HTTP 409" in err


def test_queue_and_gpus(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    queue = run_json(capsys, "queue")
    assert {"entries", "length", "held", "processor"} <= set(queue)
    gpus = run_json(capsys, "gpus")
    assert gpus["total"] == 2
    assert len(gpus["runners"][0]["gpus"]) == 2
    code, out, err = run(capsys, "gpus")
    assert code == 0
    assert "█" in out or "░" in out
    assert "RUNNER" in out and "MEMORY" in out
    fits_80_columns_without_log_lines(out, err)
    code, out, err = run(capsys, "queue")
    assert code == 0
    assert "processor" in out
    assert "running" in out
    fits_80_columns_without_log_lines(out, err)


def test_bad_input_and_unreachable_servers_get_clear_exit_codes(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "jobs", "submit", "--data-path", "d", "-o", "json")
    assert code == 2
    assert "--model-path" in err
    code, out, err = run(capsys, *submit_flags("cli-bad", 10), "--priority", "11")
    assert code == 1
    assert "validation_error, HTTP 422" in err
    port = free_port()
    code, out, err = run(capsys, "queue", "--url", f"http://127.0.0.1:{port}", "-o", "json")
    assert code == 3
    assert json.loads(out)["code"] == "unreachable"
    assert "cannot reach" in err


def test_the_progress_bar_renders_in_a_pseudo_terminal(url: str, tmp_path: Path) -> None:
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "swift_trainer.cli", *submit_flags("cli-tty", 40), "--wait"],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        env=env,
        close_fds=True,
    )
    os.close(child_fd)
    output = bytearray()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main_fd)
    text = output.decode(errors="replace")
    assert "Traceback" not in text
    assert "cli-tty" in text
    assert "steps" in text
    assert "\x1b[" in text, "a terminal gets the live (ANSI) bar"
    shown_steps = {int(step) for step in re.findall(r"(\d+)/40 steps", text)}
    assert len(shown_steps) >= 3, f"the bar moved through {sorted(shown_steps)} only"
    # 40 steps with failures at step 30: the bar ran, and the exit code says it failed.
    assert code == 1
    assert "ended failed" in text


def test_submit_after_waits_for_each_condition(
    url: str, service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fails (the simulator fails it at step 30): B after A:failed runs, C after A is
    cancelled with the reason."""
    run_json(capsys, *submit_flags("cli-dep-a", 40))
    b = run_json(capsys, *submit_flags("cli-dep-b", 10, "--after", "cli-dep-a:failed"))
    c = run_json(capsys, *submit_flags("cli-dep-c", 10, "--after", "cli-dep-a"))
    assert b["status"] == c["status"] == "waiting"
    service.wait_status("cli-dep-b", "succeeded")
    service.wait_status("cli-dep-c", "cancelled")
    shown = run_json(capsys, "jobs", "show", "cli-dep-c")
    assert shown["stop_reason"] == "job cli-dep-a failed; this job waited for it to succeed"
    code, _, err = run(capsys, *submit_flags("cli-dep-d", 10, "--after", "cli-dep-a:later"))
    assert code == 2 and "--after expects" in err


def test_sweeps_create_list_show_cancel(
    url: str, service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "sweep_id: cli-sweep\n"
        "name: rank\n"
        "base:\n"
        "  data_path: d#100\n"
        "  model_path: Qwen/Qwen2.5-0.5B\n"
        "  output_dir: output/cli-sweep\n"
        "  train_args: {max_steps: 10, save_steps: 5}\n"
        "parameters:\n"
        "  train_args.lora_rank: {values: [8, 16]}\n"
        "max_parallel: 1\n",
        encoding="utf-8",
    )
    created = run_json(capsys, "sweeps", "create", "-f", str(sweep_file))
    assert created["trials_total"] == 2
    service.wait_for(
        "the sweep to finish",
        lambda: run_json(capsys, "sweeps", "show", "cli-sweep")["status"] == "finished",
    )
    code, out, _ = run(capsys, "sweeps", "show", "cli-sweep")
    assert code == 0 and "cli-sweep-t1" in out and "100% done" in out
    code, out, _ = run(capsys, "sweeps", "list")
    assert code == 0 and "cli-sweep" in out
    sweep_file.write_text(
        sweep_file.read_text()
        .replace("cli-sweep", "cli-sweep2")
        .replace("max_steps: 10", "max_steps: 25"),
        encoding="utf-8",
    )
    run_json(capsys, "sweeps", "create", "-f", str(sweep_file))
    cancelled = run_json(capsys, "sweeps", "cancel", "cli-sweep2")
    assert cancelled["sweep_id"] == "cli-sweep2"
    service.wait_for(
        "the cancelled sweep to finish",
        lambda: run_json(capsys, "sweeps", "show", "cli-sweep2")["status"] == "finished",
    )
    final = run_json(capsys, "sweeps", "show", "cli-sweep2")
    assert {t["outcome"] for t in final["trials"] if t.get("outcome")} <= {"cancelled"}
    code, _, err = run(capsys, "sweeps", "show", "nope")
    assert code == 1 and "does not exist" in err


def test_runners_list_drain_and_undrain(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    (runner,) = run_json(capsys, "runners", "list")["runners"]
    name = runner["runner_id"]
    drained = run_json(capsys, "runners", "drain", name, "--reason", "cli maintenance")
    assert drained["changed"] is True
    # The scheduler publishes the drain with its view: wait for it to show.
    deadline = time.monotonic() + 30
    out = ""
    while "cli maintenance" not in out and time.monotonic() < deadline:
        code, out, _ = run(capsys, "runners", "list")
        assert code == 0
        time.sleep(0.2)
    assert "cli maintenance" in out
    code, out, _ = run(capsys, "runners", "undrain", name)
    assert code == 0
    assert "takes new jobs again" in out
    with pytest.raises(SystemExit) as usage:  # --reason is required
        main(["runners", "drain", name])
    assert usage.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_jobs_show_names_the_failure_kind_and_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = submit_flags("cli-data-err", 20, "--label", "sim.fail=data_error", "--wait")
    code, _, _ = run(capsys, *flags)
    assert code == 1
    shown = run_json(capsys, "jobs", "show", "cli-data-err")
    assert shown["failure"]["kind"] == "data_error"
    assert "The local path does not exist" in shown["failure"]["log_line"]
    code, out, _ = run(capsys, "jobs", "show", "cli-data-err")
    assert code == 0
    assert "kind=data_error" in out
    assert "log_line=ValueError" in out
