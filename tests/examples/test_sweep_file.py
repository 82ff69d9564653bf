"""``examples/sweep.yaml`` and the YAML files in ``docs/experiments.md`` are valid as given."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from swift_trainer.api.jobs.schemas import CreateJobRequest
from swift_trainer.api.sweeps.schemas import CreateSweepRequest
from swift_trainer.core.sweep import plan_trials

ROOT = Path(__file__).resolve().parents[2]


def yaml_blocks(text: str) -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return [yaml.safe_load(block) for block in blocks]


def test_the_example_sweep_expands_to_six_labelled_trials() -> None:
    data = yaml.safe_load((ROOT / "examples" / "sweep.yaml").read_text(encoding="utf-8"))
    request = msgspec.convert(data, CreateSweepRequest)
    trials = plan_trials("lr-rank", request.to_spec())
    assert len(trials) == 6
    assert {t.spec.labels["sweep"] for t in trials} == {"lr-rank"}


def test_every_yaml_file_in_the_experiments_page_decodes() -> None:
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    blocks = yaml_blocks(text)
    sweeps = [b for b in blocks if "parameters" in b and "base" in b]
    jobs = [b for b in blocks if "model_path" in b]
    assert len(sweeps) == 1 and len(jobs) == 1
    sweep = msgspec.convert(sweeps[0], CreateSweepRequest)
    assert len(plan_trials("doc", sweep.to_spec())) == 6
    job = msgspec.convert(jobs[0], CreateJobRequest)
    assert job.auto_export and job.tracking is not None
    random_space = next(b for b in blocks if b.get("method") == "random")
    spec = msgspec.convert({**sweeps[0], **random_space}, CreateSweepRequest).to_spec()
    assert len(plan_trials("doc", spec)) == 20
