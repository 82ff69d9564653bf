"""The simulator's ``swift eval``: scores that tests can predict, where EvalScope writes them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from swift_trainer.runner.sim_checkpoint import write_json
from swift_trainer.runner.simulator import _err, _out, _traceback


def simulated_eval(argv: list[str]) -> int:
    """``swift eval``: a score per dataset, written where EvalScope writes its reports.

    The score is a stable function of the model and the dataset, so tests can predict it;
    ``SWIFT_SIM_EVAL_FAIL=1`` makes the evaluation fail as a crashed EvalScope would.
    """
    parser = argparse.ArgumentParser(prog="swift eval", add_help=False)
    parser.add_argument("--model")
    parser.add_argument("--adapters", nargs="+", default=[])
    parser.add_argument("--eval_dataset", nargs="+", default=[])
    parser.add_argument("--eval_output_dir", default="eval_output")
    parser.add_argument("--eval_limit", type=int)
    args, _unknown = parser.parse_known_args(argv)
    frames = [("swift/cli/eval.py", 5, "<module>", "eval_main()")]
    if not args.model or not args.eval_dataset:
        _traceback("ValueError: swift eval needs --model and --eval_dataset", frames)
        return 1
    _err(f"[INFO:swift] eval_dataset: {args.eval_dataset}, limit: {args.eval_limit}")
    if os.environ.get("SWIFT_SIM_EVAL_FAIL", "").lower() in {"1", "true", "yes"}:
        _traceback("RuntimeError: EvalScope could not load the dataset (simulated)", frames)
        return 1
    trained = args.adapters[0] if args.adapters else args.model
    name = Path(trained).name or "model"
    reports = Path(args.eval_output_dir) / "reports" / name
    reports.mkdir(parents=True, exist_ok=True)
    for dataset in args.eval_dataset:
        seed = sum(ord(ch) for ch in f"{trained}|{dataset}")
        score = round(0.2 + (seed % 70) / 100, 4)
        write_json(reports / f"{dataset}.json", {"dataset_name": dataset, "score": score})
        _out(f"| {name} | {dataset} | mean_acc | {score} |")
    return 0
