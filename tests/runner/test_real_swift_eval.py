"""A real ``swift eval`` after a real ms-swift 4.6.0 training, on the CPU, with no hub.

Opt-in like ``test_real_swift.py``: ``SWIFT_TRAINER_REAL_SWIFT=1 uv run pytest -m swift``
after ``scripts/setup_real_swift.sh`` (which also installs EvalScope 1.10.0 with its
OpenCompass extra into ``.venv-swift``).

The job trains the tiny Qwen2 with LoRA and asks for ``eval`` on ``general_mcq``,
EvalScope's custom multiple-choice benchmark, read from a local CSV
(``eval_dataset_args: {"general_mcq": {"local_path": ...}}``): nothing is downloaded. The
runner merges the final checkpoint (``swift export --merge_lora true``), runs ``swift eval``
on the merged model, and reads the scores from EvalScope's own report.

What a real run showed (EvalScope 1.10.0, ms-swift 4.6.0):

* ms-swift 4.6.0's ``swift eval`` uses ``EvalType.SERVICE``, which EvalScope removed
  after 1.10.0 (1.14.1 fails with ``AttributeError``); it also lists OpenCompass's
  datasets to check the names given, so ``ms-opencompass`` must be importable.
* ``swift eval`` serves the model on ``--port`` (default 8000 on 0.0.0.0) and only waits
  until that port answers: the runner gives it a free loopback port.
* Reports land in ``<eval_output_dir>/native/<YYYYMMDD_HHMMSS>/reports/<model>/<dataset>.json``
  (``dataset_name``, ``score``, ``model_name``: the evaluated folder's name).
* ``general_qa`` does not run offline: its BLEU metric needs NLTK's ``punkt`` data, which
  NLTK downloads, and the failed metric fails the sample. ``general_mcq`` (accuracy) does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import submit_and_schedule, wait_event
from tests.runner.real_swift import tiny_spec

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.core import events as e
from swift_trainer.core.spec import EvalSpec
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent, merged_artifact_complete

pytestmark = [pytest.mark.swift, pytest.mark.timeout(1200)]

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def multiple_choice(folder: Path, count: int = 4) -> Path:
    """EvalScope's ``general_mcq`` layout: ``<subset>_val.csv`` with the choices A-D."""
    folder.mkdir(parents=True)
    with (folder / "default_val.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "A", "B", "C", "D", "answer"])
        for i in range(count):
            right = " ".join(WORDS[i : i + 4])
            wrong = [" ".join(WORDS[i + 1 : i + 5]), " ".join(WORDS[i : i + 4][::-1]), WORDS[i]]
            writer.writerow([i, f"count from {WORDS[i]} please", right, *wrong, "A"])
    return folder


async def test_real_swift_eval_scores_the_merged_model_from_a_local_dataset(
    real_agent: RunnerAgent,
    tiny: dict[str, str],
    nc: Client,
    store: SqlEventStore,
    tmp_path: Path,
) -> None:
    client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
    questions = multiple_choice(tmp_path / "mcq")
    spec = msgspec.structs.replace(
        tiny_spec(tiny, max_steps=20),
        eval=EvalSpec(
            datasets=("general_mcq",),
            limit=4,
            args={
                "eval_dataset_args": json.dumps({"general_mcq": {"local_path": str(questions)}}),
                "eval_generation_config": json.dumps({"max_tokens": 8}),
            },
        ),
    )
    await submit_and_schedule(client, "real-eval", spec, runner_id="real")
    succeeded = (await wait_event(store, "real-eval", e.JobSucceeded, timeout=1100))[0]
    eval_dir = tmp_path / "out" / "jobs" / "real" / "eval"
    log = (eval_dir / "eval.log").read_text(errors="replace")[-3000:]
    assert succeeded.eval_error is None, f"{succeeded.eval_error}\n{log}"

    # The merged model was evaluated, and it is a complete model folder.
    assert succeeded.output_path is not None
    merged = Path(succeeded.output_path + "-merged")
    assert Path(succeeded.output_path).name == "checkpoint-20"
    assert succeeded.eval_model == str(merged)
    assert merged_artifact_complete(merged)

    # The scores are EvalScope's own: one report per dataset, of this model.
    [report_file] = eval_dir.glob("native/*/reports/*/general_mcq.json")
    report = json.loads(report_file.read_text())
    assert report["model_name"] == merged.name == report_file.parent.name
    assert succeeded.eval_results == {"general_mcq": report["score"]}
    assert 0.0 <= report["score"] <= 1.0
    assert report["metrics"][0]["num"] == 4, "eval_limit and the local CSV's four rows"
    predictions = list(eval_dir.glob("native/*/predictions/*/general_mcq_default.jsonl"))
    assert len(predictions) == 1
    assert len(predictions[0].read_text().splitlines()) == 4
