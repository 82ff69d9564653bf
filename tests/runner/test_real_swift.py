"""One real ms-swift 4.6.0 job through the runner agent, on the CPU, with no hub access.

Opt-in: ``SWIFT_TRAINER_REAL_SWIFT=1 uv run pytest -m swift`` after
``scripts/setup_real_swift.sh`` (a separate ``.venv-swift`` with torch 2.13.0 CPU and
ms-swift 4.6.0; ``SWIFT_TRAINER_SWIFT_VENV`` names another one). With the variable set, a
missing ``swift`` executable fails the test instead of skipping it.

What it drives: a tiny random Qwen2 (2 layers, hidden 64, a byte-level BPE tokenizer of
~400 tokens with a ChatML template) and a 64-line ``messages`` dataset, both made locally
by ``scripts/make_tiny_qwen2.py``; then ``swift sft`` with LoRA through the agent (real
progress and checkpoints), a stop after the first checkpoint (graceful exit: SIGTERM to the
trainer, which saves a checkpoint and ends), a resume from that checkpoint in a second
attempt to the final step, and ``swift export --merge_lora true`` of the last checkpoint.

What worked, and what it showed (ms-swift 4.6.0, transformers 5.19, peft 0.20, torch
2.13.0+cpu, Python 3.11):

* Flags: ``--model <dir> --model_type qwen2 --template qwen --torch_dtype float32
  --max_length 128 --dataloader_num_workers 0 --dataset_num_proc 1`` and the job's
  LoRA/step flags; env ``HF_HUB_OFFLINE=1 MODELSCOPE_OFFLINE=1``. ``--check_model`` exists
  in 4.6 (``TrainArgumentsMixin``) and defaults to true: it contacts the ModelScope hub and
  retries for ~25 s offline, so the command builder now always passes
  ``--check_model false`` (a job's start went from ~38 s to ~12 s here).
* The seed's ``--vit_lr`` / ``--aligner_lr`` crash a text-only model (the multimodal
  optimizer looks for ``vision_tower``); the builder now passes them only to models that
  look multimodal, or when a job sets them.
* ``logging.jsonl`` lines carry ``train_speed(s/it)`` (not ``iter/s``), no
  ``percentage``, no ``memory(GiB)`` on a CPU; after the summary line 4.6.0 appends its run
  record (``last_model_checkpoint``, ``log_history``). The parser read all of it already;
  the simulator now writes the 4.6.0 format (and the ``last-checkpoint`` symlink).
* Checkpoints: ``trainer_state.json`` is written after the adapter (the completeness marker
  holds); ``--save_only_model true`` still resumes (the step comes from trainer_state).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import (
    job_events,
    log_messages,
    ok,
    submit_and_schedule,
    types,
    wait_event,
)
from tests.runner.real_swift import VENV, offline_env, run_checked, tiny_spec

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent, merged_artifact_complete

pytestmark = [pytest.mark.swift, pytest.mark.timeout(900)]


async def test_real_swift_trains_stops_resumes_and_exports(
    real_agent: RunnerAgent,
    tiny: dict[str, str],
    nc: Client,
    store: SqlEventStore,
    tmp_path: Path,
) -> None:
    client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
    job = "real-1"
    # Enough steps that a stop sent after the first checkpoint lands mid-run.
    await submit_and_schedule(client, job, tiny_spec(tiny, max_steps=600), runner_id="real")

    started = (await wait_event(store, job, e.JobStarted, timeout=300))[0]
    assert started.command[started.command.index("--check_model") + 1] == "false"
    assert "--vit_lr" not in started.command
    first = (await wait_event(store, job, e.CheckpointSaved, timeout=300))[0]
    assert first.step == 10
    assert (Path(first.path) / "adapter_model.safetensors").is_file()

    await ok(client, c.StopJob(job_id=job, reason="test stop"))
    stopped = (await wait_event(store, job, e.JobStopped, timeout=300))[0]
    assert stopped.checkpoint is not None
    stop_state = json.loads((Path(stopped.checkpoint) / "trainer_state.json").read_text())
    stopped_at = stop_state["global_step"]
    assert 10 <= stopped_at < 600, stop_state
    names = types(await job_events(store, job))
    assert "JobFailed" not in names

    # Resume: the user starts it again, the scheduler places attempt 2.
    await ok(client, c.StartJob(job_id=job))
    resumed_from = [x for x in await job_events(store, job) if isinstance(x, e.JobQueued)][-1]
    assert resumed_from.resume_from == stopped.checkpoint
    await ok(client, c.ScheduleJob(job_id=job, attempt=2, runner_id="real", gpu_ids=(0,)))
    second = (await wait_event(store, job, e.JobStarted, count=2, timeout=300))[1]
    assert second.command[second.command.index("--resume_from_checkpoint") + 1] == (
        stopped.checkpoint
    )
    succeeded = (await wait_event(store, job, e.JobSucceeded, timeout=600))[0]
    assert succeeded.attempt == 2
    assert succeeded.final_step == 600

    events = await job_events(store, job)
    progress = [x for x in events if isinstance(x, e.JobProgressed)]
    assert progress
    assert all(p.loss is not None and p.max_steps == 600 for p in progress if p.eval_loss is None)
    assert any(p.attempt == 2 and p.step > stopped_at for p in progress)
    assert progress[-1].step == 600
    assert progress[-1].train_speed is not None
    steps = [x.step for x in events if isinstance(x, e.CheckpointSaved)]
    assert steps == sorted(set(steps))
    assert steps[-1] == 600

    log_file = Path(succeeded.output_path or "").parent / "logging.jsonl"
    assert "train_speed(s/it)" in log_file.read_text()
    await real_agent.logs.flush()
    lines = await log_messages(nc, job)
    assert any("Saving model checkpoint" in m.line for m in lines)
    assert {m.attempt for m in lines} == {1, 2}
    assert [m.seq for m in lines] == sorted(m.seq for m in lines)

    await ok(client, c.RequestExport(job_id=job))
    exported = (await wait_event(store, job, e.ExportSucceeded, timeout=600))[0]
    merged = Path(exported.artifact_path)
    assert merged.name == "checkpoint-600-merged"
    assert merged_artifact_complete(merged)
    check = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); "
        "out = m(**t('count from two please', return_tensors='pt')); "
        "print(tuple(out.logits.shape))"
    )
    shape = await run_checked(
        str(VENV / "bin" / "python"), "-c", check, str(merged), env=offline_env()
    )
    assert shape.strip().startswith("(1, ")


async def test_real_swift_trains_from_a_file_uploaded_through_the_openai_api(
    swift_venv: Path, tiny: dict[str, str], tmp_path: Path
) -> None:
    """Upload with the official client, train with real ms-swift from the runner's copy of
    the object-store file, and read the merged model through ``/v1`` (auto-export)."""
    # The client and the live service are blocking: run them off the event loop.
    await asyncio.to_thread(_train_through_the_openai_api, swift_venv, tiny, tmp_path)


def _train_through_the_openai_api(swift_venv: Path, tiny: dict[str, str], tmp_path: Path) -> None:
    import io

    from openai import OpenAI
    from tests.e2e.live_service import Service, start_service, stop_service

    offline = {k: v for k, v in offline_env().items() if k.endswith(("_OFFLINE", "PARALLELISM"))}
    process, base = start_service(
        tmp_path / "service",
        "--swift-executable",
        str(swift_venv / "bin" / "swift"),
        env_extra={**offline, "OMP_NUM_THREADS": "2"},
    )
    service = Service(process, base, tmp_path / "service" / "outputs")
    try:
        with OpenAI(
            base_url=base + "/v1", api_key="sk-local", _strict_response_validation=True
        ) as client:
            content = Path(tiny["dataset"]).read_bytes()
            uploaded = client.files.create(
                file=("tiny.jsonl", io.BytesIO(content)), purpose="fine-tune"
            )
            assert uploaded.status == "processed", uploaded.status_details
            spec = tiny_spec(tiny, max_steps=20)
            body = {
                "job_id": "real-openai",
                "training_file": uploaded.id,
                "model_path": spec.model_path,
                "auto_export": True,
                "train_args": msgspec.to_builtins(spec.train_args),
            }
            created = service.http.post("/jobs", json=body)
            assert created.status_code == 201, created.text
            job = service.wait_for(
                "the real job to succeed with its merged model",
                lambda: (
                    (j := client.fine_tuning.jobs.retrieve("real-openai")).status
                    in ("succeeded", "failed")
                    and j
                ),
                timeout=600,
            )
            assert job.status == "succeeded", job.error
            assert job.training_file == uploaded.id
            assert job.fine_tuned_model is not None
            assert merged_artifact_complete(Path(job.fine_tuned_model))
            events = service.http.get("/jobs/real-openai/events").json()["events"]
            started = next(x for x in events if x["type"] == "JobStarted")["data"]["command"]
            dataset = Path(started[started.index("--dataset") + 1])
            assert dataset.read_bytes() == content, "swift trained from the runner's copy"
            assert uploaded.id in dataset.parts
    finally:
        service.http.close()
        stop_service(process)


async def test_a_preempted_real_swift_run_resumes_from_its_checkpoints_global_step(
    real_agent: RunnerAgent,
    tiny: dict[str, str],
    nc: Client,
    store: SqlEventStore,
) -> None:
    """The scheduler's preemption of a real ``swift sft``: SIGTERM within the grace, a
    checkpoint, back to the queue, and the next attempt continues from its global step."""
    client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
    job = "real-preempted"
    await submit_and_schedule(client, job, tiny_spec(tiny, max_steps=400), runner_id="real")
    await wait_event(store, job, e.CheckpointSaved, timeout=300)

    reason = "preempted by urgent (priority 9 > 5) on host real"
    await ok(
        client,
        c.PreemptJob(job_id=job, attempt=1, preempted_by="urgent", reason=reason, grace_s=120),
    )
    preempted = (await wait_event(store, job, e.JobPreempted, timeout=300))[0]
    assert preempted.checkpoint is not None
    state = json.loads((Path(preempted.checkpoint) / "trainer_state.json").read_text())
    saved_at = state["global_step"]
    assert 10 <= saved_at < 400, state
    requeued = [x for x in await job_events(store, job) if isinstance(x, e.JobRequeued)][-1]
    assert (requeued.retries, requeued.resume_from) == (0, preempted.checkpoint)

    await ok(client, c.ScheduleJob(job_id=job, attempt=2, runner_id="real", gpu_ids=(0,)))
    second = (await wait_event(store, job, e.JobStarted, count=2, timeout=300))[1]
    assert second.command[second.command.index("--resume_from_checkpoint") + 1] == (
        preempted.checkpoint
    )
    succeeded = (await wait_event(store, job, e.JobSucceeded, timeout=600))[0]
    assert succeeded.attempt == 2
    progress = [x for x in await job_events(store, job) if isinstance(x, e.JobProgressed)]
    resumed = [p.step for p in progress if p.attempt == 2]
    assert resumed and min(resumed) > saved_at, "it went on from the checkpoint's global step"


async def test_real_swift_with_a_missing_dataset_fails_as_a_data_error_at_once(
    real_agent: RunnerAgent,
    tiny: dict[str, str],
    nc: Client,
    store: SqlEventStore,
    tmp_path: Path,
) -> None:
    client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
    job = "real-missing-data"
    missing = str(tmp_path / "nowhere" / "train.jsonl")
    spec = msgspec.structs.replace(tiny_spec(tiny, max_steps=20), data_path=missing)
    await submit_and_schedule(client, job, spec, runner_id="real")
    failed = (await wait_event(store, job, e.JobFailed, timeout=300))[0]
    assert failed.failure is not None, failed
    assert failed.failure.kind == "data_error", failed.failure
    assert failed.failure.log_line is not None
    assert missing in failed.failure.log_line  # ms-swift's own line names the path
    assert "not retried" in failed.reason
    assert "JobRequeued" not in types(await job_events(store, job))
