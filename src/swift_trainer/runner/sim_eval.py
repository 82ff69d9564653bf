"""The simulator's ``swift eval``: scores that tests can predict, where EvalScope writes them."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from swift_trainer.runner.sim_checkpoint import write_json
from swift_trainer.runner.simulator import _err, _out, _traceback


def simulated_eval(argv: list[str]) -> int:
    """``swift eval``: a score per dataset, written where EvalScope's Native backend does.

    Reports go to ``<eval_output_dir>/native/<YYYYMMDD_HHMMSS>/reports/<model>/<dataset>.json``
    with ``dataset_name`` and ``score``, as EvalScope 1.x writes them. A local model folder
    (an absolute path) must exist with its ``config.json``, as real swift needs to load it.
    The score is a stable function of the model and the dataset, so tests can predict it;
    ``SWIFT_SIM_EVAL_FAIL=1`` makes the evaluation fail as a crashed EvalScope would.
    """
    parser = argparse.ArgumentParser(prog="swift eval", add_help=False)
    parser.add_argument("--model")
    parser.add_argument("--adapters", nargs="+", default=[])
    parser.add_argument("--eval_dataset", nargs="+", default=[])
    parser.add_argument("--eval_output_dir", default="eval_output")
    parser.add_argument("--eval_limit", type=int)
    parser.add_argument("--port", type=int, default=8000)
    args, _unknown = parser.parse_known_args(argv)
    frames = [("swift/cli/eval.py", 5, "<module>", "eval_main()")]
    if not args.model or not args.eval_dataset:
        _traceback("ValueError: swift eval needs --model and --eval_dataset", frames)
        return 1
    model = Path(args.model)
    if model.is_absolute() and not (model / "config.json").is_file():
        _traceback(f"OSError: {model} does not appear to have a file named config.json", frames)
        return 1
    _err(f"[INFO:swift] eval_dataset: {args.eval_dataset}, limit: {args.eval_limit}")
    _err(f"INFO:     Uvicorn running on http://127.0.0.1:{args.port} (Press CTRL+C to quit)")
    if os.environ.get("SWIFT_SIM_EVAL_FAIL", "").lower() in {"1", "true", "yes"}:
        _traceback("RuntimeError: EvalScope could not load the dataset (simulated)", frames)
        return 1
    trained = args.adapters[0] if args.adapters else args.model
    name = Path(args.model).name or "model"
    run = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    reports = Path(args.eval_output_dir).absolute() / "native" / run / "reports" / name
    reports.mkdir(parents=True, exist_ok=True)
    for dataset in args.eval_dataset:
        seed = sum(ord(ch) for ch in f"{trained}|{dataset}")
        score = round(0.2 + (seed % 70) / 100, 4)
        report = {"name": f"{name}@{dataset}", "dataset_name": dataset, "model_name": name}
        write_json(reports / f"{dataset}.json", {**report, "score": score})
        _out(f"| {name} | {dataset} | mean_acc | default | {score} |")
    return 0
