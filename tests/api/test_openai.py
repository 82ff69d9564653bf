"""The /v1 API in process (real NATS, store, handler, read model; runner reports scripted):
one job seen through both APIs, exact pagination, pause/resume/cancel, upload limits."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
from tests.api.conftest import Stack, read_model_of, running_stack

from swift_trainer.core import commands as c

JSONL = b'{"query": "q", "response": "r"}\n'


async def upload(client: httpx.AsyncClient, content: bytes = JSONL) -> dict[str, Any]:
    response = await client.post(
        "/v1/files", files={"file": ("d.jsonl", content)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


async def test_native_pause_resume_and_cancel_and_the_same_job_under_v1(
    memory_stack: Stack,
) -> None:
    s = memory_stack
    job_id = await s.create(job_id="both-apis")
    await s.start(job_id)
    await s.checkpoint(job_id, 10)

    paused = await s.client.post(s.url(f"/jobs/{job_id}/pause"))
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "stopping"
    assert (await s.client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()["status"] == "running"
    await s.send(c.ReportStopped(job_id=job_id, attempt=s.attempts[job_id], runner_id="runner-1"))
    assert (await s.job(job_id)).status == "paused"
    seen = (await s.client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert seen["status"] == "paused"
    assert seen["training_file"] == "AI-ModelScope/coco#200", "a native dataset shows as is"

    resumed = await s.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued"
    assert (await s.job(job_id)).resume_from == f"output/{job_id}/checkpoint-10"

    cancelled = await s.client.post(s.url(f"/jobs/{job_id}/cancel"))
    assert cancelled.json()["status"] == "cancelled"
    again = await s.client.post(s.url(f"/jobs/{job_id}/cancel"))
    assert again.json()["changed"] is False
    native = await s.client.post(s.url(f"/jobs/{job_id}/resume"))
    assert native.status_code == 409, "native refusals stay 409 problem details"
    assert native.json()["code"] == "invalid_transition"
    refused = await s.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    openai_error(refused, 400, "invalid_transition")
    assert refused.headers["x-should-retry"] == "false"
    start = await s.client.post(s.url(f"/jobs/{job_id}/start"))
    assert start.status_code == 409, "cancel is final: start cannot bring it back"
    missing = await s.client.post("/v1/fine_tuning/jobs/nope/cancel")
    assert openai_error(missing, 404, "job_not_found")["type"] == "not_found_error"


async def test_job_lists_page_exactly_and_filter_on_metadata(memory_stack: Stack) -> None:
    s = memory_stack
    file_id = (await upload(s.client))["id"]
    ids = []
    for i in range(3):
        body = {"model": "m", "training_file": file_id, "metadata": {"i": str(i % 2)}}
        response = await s.client.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    newest_first = list(reversed(ids))

    def page(**params: Any) -> Any:
        return s.client.get("/v1/fine_tuning/jobs", params=params)

    full = (await page(limit=3)).json()
    assert [j["id"] for j in full["data"]] == newest_first
    assert full["has_more"] is False, "exactly limit items: nothing more"
    first = (await page(limit=2)).json()
    assert (len(first["data"]), first["has_more"]) == (2, True)
    rest = (await page(limit=2, after=first["data"][-1]["id"])).json()
    assert [j["id"] for j in rest["data"]] == newest_first[2:]
    assert rest["has_more"] is False
    odd = (await page(**{"metadata[i]": "1"})).json()
    assert [j["id"] for j in odd["data"]] == [ids[1]]
    unknown_after = await page(after="ftjob-unknown")
    assert openai_error(unknown_after, 400, "validation_error")["param"] == "after"

    events = (
        await s.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events", params={"limit": 1})
    ).json()
    assert events["has_more"] is True
    everything = (
        await s.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events", params={"limit": 100})
    ).json()
    assert everything["has_more"] is False
    older = (
        await s.client.get(
            f"/v1/fine_tuning/jobs/{ids[0]}/events", params={"after": events["data"][0]["id"]}
        )
    ).json()
    assert [e["id"] for e in older["data"]] == [e["id"] for e in everything["data"][1:]]


async def test_bad_requests_name_their_parameter(memory_stack: Stack) -> None:
    s = memory_stack
    bad = await upload(s.client, b'{"messages": "hi"}\n')
    assert bad["status"] == "error"
    assert bad["status_details"].startswith("line 1: 'messages'")
    cases = [
        ({"model": "m", "training_file": bad["id"]}, "training_file"),
        ({"model": "m", "training_file": "nonsense"}, "training_file"),
        ({"model": "m", "training_file": "file-x", "surprise": 1}, None),
        ({"model": "m", "training_file": "file-x", "integrations": [{"type": "comet"}]}, None),
    ]
    for body, param in cases:
        response = await s.client.post("/v1/fine_tuning/jobs", json=body)
        error = openai_error(response, 400, response.json()["error"]["code"])
        if param is not None:
            assert error["param"] == param, error


async def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model, files_max_bytes=100) as (s, _),
    ):
        response = await s.client.post(
            "/v1/files",
            files={"file": ("big.jsonl", JSONL * 10)},
            data={"purpose": "fine-tune"},
        )
        assert openai_error(response, 413, "payload_too_large")["param"] == "file"
        declared = await s.client.post(
            "/v1/files",
            files={"file": ("big.jsonl", JSONL * 5000)},  # Content-Length alone says too big
            data={"purpose": "fine-tune"},
        )
        assert "FILES_MAX_BYTES" in openai_error(declared, 413, "payload_too_large")["message"]
        listed = (await s.client.get("/v1/files")).json()
        assert listed["data"] == []
        assert listed["has_more"] is False
        small = await upload(s.client)
        assert small["status"] == "processed"
        assert (await s.client.get(f"/v1/files/{small['id']}/content")).content == JSONL


async def test_trained_tokens_come_from_the_trainers_log(memory_stack: Stack) -> None:
    s = memory_stack
    job_id = await s.create(job_id="tokens")
    attempt = await s.start(job_id)
    await s.send(
        c.ReportProgress(
            job_id=job_id,
            attempt=attempt,
            runner_id="runner-1",
            step=100,
            max_steps=100,
            loss=0.5,
            tokens_seen=4096,
        )
    )
    running = (await s.client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert running["trained_tokens"] is None, "null until the job has succeeded"
    await s.succeed(job_id)
    done = (await s.client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert (done["status"], done["trained_tokens"]) == ("succeeded", 4096)
    (results,) = done["result_files"]
    csv = (await s.client.get(f"/v1/files/{results}/content")).text.splitlines()
    assert csv[1].startswith("100,0.5,")


async def test_the_result_file_carries_the_evaluations_scores_on_its_last_row(
    memory_stack: Stack,
) -> None:
    s = memory_stack
    job_id = await s.create(job_id="scored")
    attempt = await s.start(job_id)
    for step, loss in ((50, 0.9), (100, 0.5)):
        await s.send(
            c.ReportProgress(
                job_id=job_id, attempt=attempt, runner_id="runner-1", step=step,
                max_steps=100, loss=loss,
            )
        )  # fmt: skip
    await s.send(
        c.ReportSucceeded(
            job_id=job_id,
            attempt=attempt,
            runner_id="runner-1",
            final_step=100,
            eval_results={"gsm8k": 0.62, "arc": 0.71},
            eval_model="/out/scored/checkpoint-100-merged",
        )
    )
    done = (await s.client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    (results,) = done["result_files"]
    rows = list(csv.reader(io.StringIO((await s.client.get(f"/v1/files/{results}/content")).text)))
    assert rows[0] == [
        "step", "train_loss", "learning_rate", "valid_loss", "epoch", "at", "eval:arc",
        "eval:gsm8k",
    ]  # fmt: skip
    assert [r[0] for r in rows[1:]] == ["50", "100"]
    assert rows[1][-2:] == ["", ""], "the scores are of the final model: the last row"
    assert rows[2][-2:] == ["0.71", "0.62"]
    native = (await s.client.get(s.url(f"/jobs/{job_id}"))).json()
    assert native["eval_results"] == {"gsm8k": 0.62, "arc": 0.71}
    assert native["eval_model"] == "/out/scored/checkpoint-100-merged"

    # Scores without step metrics: one row at the final step.
    bare = await s.create(job_id="scored-bare")
    attempt = await s.start(bare)
    await s.send(
        c.ReportSucceeded(
            job_id=bare, attempt=attempt, runner_id="runner-1", eval_results={"arc": 0.5}
        )
    )
    done = (await s.client.get(f"/v1/fine_tuning/jobs/{bare}")).json()
    (results,) = done["result_files"]
    text = (await s.client.get(f"/v1/files/{results}/content")).text
    assert text.splitlines() == [
        "step,train_loss,learning_rate,valid_loss,epoch,at,eval:arc",
        ",,,,,,0.5",
    ]


async def test_file_names_are_kept_safe_and_unicode_survives_the_download(
    memory_stack: Stack,
) -> None:
    s = memory_stack
    response = await s.client.post(
        "/v1/files",
        files={"file": ('../dir/数据 "v2".jsonl', JSONL)},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["filename"] == "数据 _v2_.jsonl"
    download = await s.client.get(f"/v1/files/{stored['id']}/content")
    assert download.status_code == 200
    assert download.content == JSONL
    assert "filename*=UTF-8''%E6%95%B0%E6%8D%AE" in download.headers["content-disposition"]
    assert (await s.client.get("/v1/files/file-nothere/content")).status_code == 404


async def test_dpo_needs_preference_pairs_in_its_files(memory_stack: Stack) -> None:
    s = memory_stack
    plain = (await upload(s.client))["id"]
    pairs = (
        await upload(s.client, b'{"query": "q", "response": "good", "rejected_response": "bad"}\n')
    )["id"]
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    refused = await s.client.post(
        "/v1/fine_tuning/jobs", json={"model": "m", "training_file": plain, "method": dpo}
    )
    error = openai_error(refused, 400, "invalid_file")
    assert error["param"] == "training_file"
    assert "rejected_response" in error["message"]
    accepted = await s.client.post(
        "/v1/fine_tuning/jobs", json={"model": "m", "training_file": pairs, "method": dpo}
    )
    assert accepted.status_code == 200, accepted.text
    job = accepted.json()
    assert job["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "n_epochs": "auto",
                "beta": 0.1,
            }
        },
    }
    native = (await s.client.get(s.url(f"/jobs/{job['id']}"))).json()
    assert (native["method"], native["dpo_beta"]) == ("dpo", 0.1)
