"""The official ``openai`` client against a live ``swift-trainer up --simulate-gpus 2``.

Strict response validation everywhere (every field the client's models require must be
there, with the right type) except where a job is ``paused``: the client's status Literal
does not list ``paused`` yet, though the API returns it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import psutil
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob
from tests.e2e.live_service import Service, start_service, stop_service

T = TypeVar("T")
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def conversations(count: int) -> bytes:
    records: list[dict[str, Any]] = []
    for i in range(count):
        if i % 2:
            records.append({"query": f"what is {i}+{i}?", "response": str(2 * i)})
        else:
            records.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": f"say {i}"},
                        {"role": "assistant", "content": str(i)},
                    ]
                }
            )
    return jsonl(records)


def preference_pairs(count: int) -> bytes:
    return jsonl(
        [
            {"query": f"{i}+{i}?", "response": str(2 * i), "rejected_response": "?"}
            for i in range(count)
        ]
    )


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str]]:
    data_dir = tmp_path_factory.mktemp("openai")
    process, base = start_service(data_dir, "--simulate-step-seconds", "0.05")
    service = Service(process, base, data_dir / "outputs")
    children = psutil.Process(process.pid).children(recursive=True)
    try:
        yield service, base
    finally:
        service.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]
        for child in children:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                assert "swift_trainer.runner.simulator" not in " ".join(child.cmdline())


@pytest.fixture(scope="module")
def client(live: tuple[Service, str]) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=live[1] + "/v1",
        api_key="sk-local-ignored-until-api-keys-exist",
        _strict_response_validation=True,
        max_retries=0,
        timeout=30,
    ) as strict:
        yield strict


@pytest.fixture(scope="module")
def lax(live: tuple[Service, str]) -> Iterator[OpenAI]:
    """For calls that answer with a paused job (not in the client's status Literal yet)."""
    with OpenAI(base_url=live[1] + "/v1", api_key="sk-local", max_retries=0) as plain:
        yield plain


def upload(client: OpenAI, name: str, content: bytes) -> FileObject:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune")


def test_files_upload_validate_list_page_download_and_delete(client: OpenAI) -> None:
    content = conversations(8)
    good = upload(client, "train.jsonl", content)
    assert (good.object, good.purpose, good.status) == ("file", "fine-tune", "processed")
    assert good.bytes == len(content)
    assert good.filename == "train.jsonl"
    assert good.status_details is None
    assert client.files.retrieve(good.id) == good
    assert client.files.content(good.id).read() == content

    bad_lines = content + b'{"messages": []}\n' + b'{"query": "no response"}\n'
    bad = upload(client, "bad.jsonl", bad_lines)
    assert bad.status == "error"
    assert bad.status_details is not None
    assert bad.status_details.startswith("line 9: ")
    not_json = upload(client, "broken.jsonl", b'{"query": "a", "response": "b"}\n{oops\n')
    assert not_json.status == "error"
    assert not_json.status_details is not None
    assert "line 2: not valid JSON" in not_json.status_details

    ids = [f.id for f in client.files.list(limit=1, purpose="fine-tune")]  # pages of one
    assert len(ids) == len(set(ids))
    assert {good.id, bad.id, not_json.id} <= set(ids)
    assert ids.index(not_json.id) < ids.index(good.id), "newest first by default"
    ascending = [f.id for f in client.files.list(order="asc", limit=2)]
    assert ascending.index(good.id) < ascending.index(not_json.id)

    deleted = client.files.delete(bad.id)
    assert (deleted.id, deleted.deleted) == (bad.id, True)
    with pytest.raises(NotFoundError):
        client.files.retrieve(bad.id)
    with pytest.raises(BadRequestError) as wrong_purpose:
        client.files.create(file=("x.jsonl", io.BytesIO(content)), purpose="batch")
    assert wrong_purpose.value.param == "purpose"


def test_a_file_over_the_size_limit_is_refused_while_streaming(live: tuple[Service, str]) -> None:
    # FILES_MAX_BYTES is 512 MiB by default; a body that claims more is refused by the limit
    # check as it streams. A small limit is tested in tests/api; here: the shape of the error.
    response = httpx.post(
        live[1] + "/v1/files",
        files={"file": ("x.jsonl", b"not json\n")},
        data={"purpose": "fine-tune"},
        headers={"Authorization": "Bearer anything"},
    )
    assert response.status_code == 200, "Authorization is accepted and ignored (no keys yet)"
    broken = httpx.post(
        live[1] + "/v1/files",
        content=b"--x\r\nnot multipart",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert broken.status_code == 400
    assert set(broken.json()["error"]) == {"message", "type", "param", "code"}


def test_fine_tuning_jobs_through_the_official_client(
    live: tuple[Service, str], client: OpenAI, lax: OpenAI
) -> None:
    service, _ = live
    short = upload(client, "short.jsonl", conversations(8))  # 2 optimizer steps
    long = upload(client, "long.jsonl", conversations(400))  # 100 steps per epoch
    assert short.status == long.status == "processed"

    first = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=short.id,
        validation_file=short.id,
        suffix="first",
        seed=7,
        metadata={"run": "first"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    assert first.status == "queued"
    assert (first.model, first.training_file, first.validation_file) == (MODEL, short.id, short.id)
    assert (first.seed, first.organization_id, first.metadata) == (7, "org-local", {"run": "first"})
    assert first.hyperparameters.n_epochs == 1
    assert first.hyperparameters.batch_size == "auto"
    assert first.error is None and first.fine_tuned_model is None
    second = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=long.id,
        hyperparameters={"n_epochs": 5, "learning_rate_multiplier": 2.0},
        metadata={"run": "second"},
    )
    assert second.hyperparameters.learning_rate_multiplier == pytest.approx(2.0)
    assert isinstance(second.seed, int)
    with pytest.raises(BadRequestError) as no_pairs:  # DPO trains on preference pairs
        client.fine_tuning.jobs.create(model=MODEL, training_file=long.id, method={"type": "dpo"})
    assert no_pairs.value.param == "training_file"
    pairs = upload(client, "pairs.jsonl", preference_pairs(400))
    third = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 5}}},
    )
    assert third.method is not None and third.method.type == "dpo"

    # The same job through the native API.
    native = service.http.get(f"/jobs/{first.id}").json()
    assert native["training_file"] == short.id
    assert native["metadata"] == {"run": "first"}

    # Listing: auto-pagination over pages of one ends (has_more exact, after honoured).
    listed = [job.id for job in client.fine_tuning.jobs.list(limit=1)]
    assert listed == [third.id, second.id, first.id]
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(after=second.id, limit=5)] == [first.id]
    only = client.fine_tuning.jobs.list(metadata={"run": "second"})
    assert [j.id for j in only.data] == [second.id]
    assert only.has_more is False

    done: FineTuningJob = wait_until(
        "the first job to succeed with its merged model",
        lambda: (j := client.fine_tuning.jobs.retrieve(first.id)).status == "succeeded" and j,
        timeout=90,
    )
    assert done.fine_tuned_model is not None
    assert Path(done.fine_tuned_model).is_dir(), "fine_tuned_model is the merged model"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert done.error is None
    (results,) = done.result_files
    csv = client.files.content(results).text.splitlines()
    assert csv[0] == "step,train_loss,learning_rate,valid_loss,epoch,at"
    assert len(csv) > 1

    events = list(client.fine_tuning.jobs.list_events(first.id, limit=3))
    assert len(events) == len({e.id for e in events}) > 5
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics, "progress reports are metrics events"
    assert isinstance(metrics[0].data, dict) and "step" in metrics[0].data
    assert {e.level for e in events} <= {"info", "warn", "error"}
    assert events[-1].message == "Created fine-tuning job"

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(first.id, limit=1))
    assert checkpoints
    latest = checkpoints[0]
    assert latest.fine_tuning_job_id == first.id
    assert latest.step_number >= 1
    assert Path(latest.fine_tuned_model_checkpoint).name.startswith("checkpoint-")

    # Pause the second job once it runs, then resume it from its checkpoint.
    wait_until(
        "the second job to run",
        lambda: lax.fine_tuning.jobs.retrieve(second.id).status == "running",
    )
    lax.fine_tuning.jobs.pause(second.id)
    paused = wait_until(
        "the second job to be paused",
        lambda: (j := lax.fine_tuning.jobs.retrieve(second.id)).status == "paused" and j,
    )
    assert paused.fine_tuned_model is None
    resumed = client.fine_tuning.jobs.resume(second.id)
    assert resumed.status in ("queued", "running")
    queued_again = service.http.get(f"/jobs/{second.id}").json()
    assert queued_again["resume_from"], "resume continues from the pause's checkpoint"

    # Cancel the third job: final, whatever it was doing.
    client.fine_tuning.jobs.cancel(third.id)
    cancelled = wait_until(
        "the third job to be cancelled",
        lambda: (j := client.fine_tuning.jobs.retrieve(third.id)).status == "cancelled" and j,
    )
    assert cancelled.finished_at is not None
    with pytest.raises(BadRequestError) as refused:
        client.fine_tuning.jobs.resume(third.id)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.code == "invalid_transition"
    with pytest.raises(BadRequestError):
        client.fine_tuning.jobs.pause(first.id)  # succeeded: nothing to pause
    with pytest.raises(NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(BadRequestError) as bad_file:
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-doesnotexist")
    assert bad_file.value.param == "training_file"
    client.fine_tuning.jobs.cancel(second.id)


def test_an_evaluated_job_has_its_scores_in_the_result_file(
    live: tuple[Service, str], client: OpenAI
) -> None:
    """A job with ``eval`` (native API), read through ``/v1``: its merged model was evaluated,
    and the result file's last row carries an ``eval:<dataset>`` column per dataset."""
    service, _ = live
    data = upload(client, "eval.jsonl", conversations(8))
    body = {
        "job_id": "evaluated-v1",
        "training_file": data.id,
        "model_path": MODEL,
        "auto_export": True,
        "eval": {"datasets": ["gsm8k", "arc"], "limit": 5},
    }
    created = service.http.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    done: FineTuningJob = wait_until(
        "the evaluated job to succeed",
        lambda: (j := client.fine_tuning.jobs.retrieve("evaluated-v1")).status == "succeeded" and j,
        timeout=90,
    )
    native = service.http.get("/jobs/evaluated-v1").json()
    assert set(native["eval_results"]) == {"gsm8k", "arc"}
    assert native["eval_model"] == done.fine_tuned_model, "the merged model, merged once"
    (results,) = done.result_files
    rows = list(csv.reader(io.StringIO(client.files.content(results).text)))
    assert rows[0][-2:] == ["eval:arc", "eval:gsm8k"]
    scores = native["eval_results"]
    assert [float(v) for v in rows[-1][-2:]] == [scores["arc"], scores["gsm8k"]]
    assert all(row[-2:] == ["", ""] for row in rows[1:-1])


def test_openai_errors_keep_their_shape(live: tuple[Service, str]) -> None:
    response = httpx.post(live[1] + "/v1/fine_tuning/jobs", json={"model": "m"})
    assert response.status_code == 400
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    native = httpx.get(live[1] + "/api/v1/training/jobs/nope")
    assert native.headers["content-type"].startswith("application/problem+json")


_ = openai  # the module is the subject under test


def test_the_documented_example_runs(
    live: tuple[Service, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    page = (Path(__file__).parents[2] / "docs" / "openai.md").read_text()
    start = page.index("```python\n") + 10
    code = page[start : page.index("```\n", start)]
    code = code.replace("http://127.0.0.1:8000/v1", live[1] + "/v1").replace(
        "time.sleep(10)", "time.sleep(0.2)"
    )
    (tmp_path / "train.jsonl").write_bytes(conversations(8))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/openai.md", "exec"), {})
    status, model = capsys.readouterr().out.split()
    assert status == "succeeded"
    assert Path(model).is_dir()
