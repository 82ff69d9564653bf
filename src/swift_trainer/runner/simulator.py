"""A stand-in for the ``swift`` CLI, so the runner can be exercised on machines without GPUs.

It takes the argv real ``swift sft`` / ``swift export`` take and leaves on disk what ms-swift
4.x leaves: ``logging.jsonl`` lines with swift's own keys, ``checkpoint-N`` folders (written
``trainer_state.json`` last, as HF's Trainer does, rotated by ``save_total_limit``), and an
``args.json``. It also has the same process shape, because stop handling depends on it:

* ``swift`` (the launcher, ``swift/cli/main.py``) only runs ``python sft.py ...`` as a child
  and dies on SIGTERM without passing it on, orphaning the trainer;
* with ``NPROC_PER_NODE`` it runs ``torch.distributed.run`` instead, an agent that starts one
  worker per GPU, forwards SIGTERM to them and kills the rest when one fails;
* the trainer with ``--callbacks graceful_exit`` turns SIGTERM into "save a checkpoint at the
  end of this step, then finish" and still writes its summary line.

Only the standard library is used (with ``sim_args``, the command line, and
``sim_checkpoint``, the files written): the launcher starts this very file as a script for
the agent and the workers, like swift starts ``sft.py``.

Simulator-only knobs (flags or environment): ``--simulate-step-seconds``
(``SWIFT_SIM_STEP_SECONDS``, default 0.05), ``--simulate-fail-at-step K``
(``SWIFT_SIM_FAIL_AT_STEP``), ``--simulate-crash-after-summary``
(``SWIFT_SIM_CRASH_AFTER_SUMMARY=1``), ``--simulate-export-fail``
(``SWIFT_SIM_EXPORT_FAIL=1``), ``--simulate-startup-seconds`` (``SWIFT_SIM_STARTUP_SECONDS``),
``--simulate-log-lines-per-second N`` (``SWIFT_SIM_LOG_LINES_PER_SECOND``): while training,
the master also writes N numbered lines a second to stdout, each with the time it was
written (``chatter <n> at <epoch seconds>``), so a benchmark can follow a chatty job's
output to the API and time it (``tests/perf/bench_logs.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

# Absolute imports: the launcher runs this file as a script (``python -P simulator.py``).
from swift_trainer.runner.sim_args import compute_max_steps, parse_args
from swift_trainer.runner.sim_checkpoint import (
    EMPTY_SAFETENSORS,
    append_jsonl,
    output_dir_of,
    resume_step,
    save_checkpoint,
    write_json,
)
from swift_trainer.runner.sim_faults import INPUT_FAULTS, fault_message, report_faulted_card
from swift_trainer.runner.sim_rendezvous import MasterLink, WorkerLink, record_env

_ROLE_ENV = "SWIFT_SIM_ROLE"
_TORCHRUN = "torch.distributed.run"
_THIS_FILE = str(Path(__file__).resolve())


class _Bar:
    """Whether a tqdm-style bar (``\\r`` redraws, no newline) is open on stderr."""

    open = False

    @classmethod
    def draw(cls, text: str) -> None:
        sys.stderr.write("\r" + text)
        sys.stderr.flush()
        cls.open = True


#: The chatter thread and the training loop write whole lines, never parts of each other's.
_WRITING = threading.Lock()
#: A chatter line's filler, to the length of a typical swift log line.
_CHATTER_PAD = "x" * 60


def _out(text: str, stream: TextIO | None = None) -> None:
    target = stream if stream is not None else sys.stdout
    with _WRITING:
        if target is sys.stderr and _Bar.open:
            text = "\n" + text  # tqdm.write moves below the bar the same way
            _Bar.open = False
        target.write(text + "\n")
        target.flush()


def _chatter(lines_per_second: float) -> None:
    """Write ``lines_per_second`` numbered, timestamped lines a second, in 10 ms slices."""
    start = time.monotonic()
    written = 0
    while True:
        due = int((time.monotonic() - start) * lines_per_second)
        if due > written:
            now = time.time()
            chunk = "".join(
                f"[INFO:swift] chatter {n} at {now:.6f} {_CHATTER_PAD}\n"
                for n in range(written, due)
            )
            with _WRITING:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            written = due
        time.sleep(0.01)


def _err(text: str) -> None:
    _out(text, sys.stderr)


# --- helpers shared by the roles ------------------------------------------------------------


def format_time(seconds: float) -> str:
    """ms-swift's ``format_time``: ``"1d 2h 3m 4s"``, ``"2h 3m 4s"``, ``"3m 4s"``, ``"4s"``."""
    parts = (
        (int(seconds // 86400), "d"),
        (int(seconds % 86400 // 3600), "h"),
        (int(seconds % 3600 // 60), "m"),
    )
    shown = [f"{n}{unit}" for i, (n, unit) in enumerate(parts) if any(m for m, _ in parts[: i + 1])]
    return " ".join([*shown, f"{int(seconds % 60)}s"])


def _traceback(error: str, frames: Sequence[tuple[str, int, str, str]]) -> None:
    lines = ["Traceback (most recent call last):"]
    for filename, lineno, func, code in frames:
        lines.append(f'  File "{filename}", line {lineno}, in {func}')
        lines.append(f"    {code}")
    lines.append(error)
    _err("\n".join(lines))


def _spawn(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # -P: the script's folder (this package) must not shadow standard modules.
    return subprocess.Popen([sys.executable, "-P", _THIS_FILE, *argv], env=env)


# --- launcher: swift/cli/main.py ----------------------------------------------------------


def _launcher(command: str, argv: list[str]) -> int:
    """Like ``swift/cli/main.py``: run the entry script (or torchrun) and mirror its exit.

    SIGTERM keeps Python's default (die at once, leaving the trainer running): exactly why
    a supervisor must not stop a job by signalling this process.
    """
    env = dict(os.environ)
    nproc = env.get("NPROC_PER_NODE")
    script = f"swift/cli/{command}.py"
    if nproc and command in {"sft", "pt", "rlhf"}:
        env[_ROLE_ENV] = "agent"
        shown = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc]
        if env.get("MASTER_PORT"):
            shown += ["--master_port", env["MASTER_PORT"]]
    else:
        env[_ROLE_ENV] = "worker"
        env.setdefault("RANK", "0")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        shown = [sys.executable]
    _out(f"run sh: `{' '.join([*shown, script, *argv])}`")
    # torchrun's command line differs from its ranks', as with the real one.
    child_argv = [_TORCHRUN, command, *argv] if env[_ROLE_ENV] == "agent" else [command, *argv]
    return _spawn(child_argv, env).wait()


# --- agent: torch.distributed.run ---------------------------------------------------------


def _terminate(children: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _join_nodes(argv: list[str]) -> tuple[MasterLink | WorkerLink | None, int]:
    """With ``NNODES`` > 1: record the rendezvous env and meet the other nodes' agents.

    Returns the link (None for one node) and this node's rank.
    """
    nnodes = int(os.environ.get("NNODES", "1"))
    node_rank = int(os.environ.get("NODE_RANK", "0"))
    if nnodes <= 1:
        return None, 0
    record_env(output_dir_of(parse_args(argv[1:])), os.environ)
    port = int(os.environ["MASTER_PORT"])
    if node_rank == 0:
        return MasterLink(port), 0
    return WorkerLink(os.environ["MASTER_ADDR"], port, timeout_s=60.0), node_rank


def _agent(argv: list[str]) -> int:
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    nnodes = int(os.environ.get("NNODES", "1"))
    try:
        link, node_rank = _join_nodes(argv)
    except (ConnectionError, OSError, KeyError, ValueError) as exc:
        _err(str(exc))
        return 1
    _err(
        "W0000 00:00:00.000000 torch/distributed/run.py:792] Setting OMP_NUM_THREADS "
        "environment variable for each process to be 1 in default, to avoid your system "
        "being overloaded, please further tune the variable for optimal performance in "
        "your application as needed.",
    )
    workers: list[subprocess.Popen[bytes]] = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            {
                _ROLE_ENV: "worker",
                "RANK": str(node_rank * nproc + rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nnodes * nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
            },
        )
        workers.append(_spawn(argv, env))

    def forward(signum: int, _frame: object) -> None:
        _err(f"W torch/distributed/elastic/agent/server/api.py] Received {signum} death signal,")
        _err("shutting down workers")
        _terminate(workers, timeout=30.0)  # torchrun's own limit before SIGKILL
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, forward)
    while True:
        codes = [w.poll() for w in workers]
        failed = [(rank, c) for rank, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            _terminate(workers)
            rank, code = failed[0]
            _err("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ")
            _err("=" * 56)
            _err(f"swift/cli/sft.py FAILED\n  rank      : {rank}\n  exitcode  : {code}")
            _err("=" * 56)
            return 1
        if all(c == 0 for c in codes):
            if isinstance(link, MasterLink):
                link.finish()
            return 0
        if isinstance(link, WorkerLink) and link.master_gone():
            _err(
                "torch.distributed.DistBackendError: the connection to rank 0 at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} was lost"
            )
            _terminate(workers)
            return 1
        time.sleep(0.02)


# --- worker: swift/cli/sft.py -------------------------------------------------------------


class _Stop:
    """SIGTERM sets this flag; GracefulExitCallback checks it at the end of each step."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(_signum: int, _frame: object) -> None:
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)


class _Trainer:
    """Rank 0's view of a training run; other ranks only keep pace."""

    def __init__(self, args: argparse.Namespace, output_dir: Path, max_steps: int) -> None:
        self.args = args
        self.output_dir = output_dir
        self.max_steps = max_steps
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.log_history: list[dict[str, Any]] = []
        self.random = random.Random(args.seed + self.rank)
        self.start_time = time.time()
        self.start_step = 0
        self.lr: float = args.learning_rate or (1e-5 if args.tuner_type == "full" else 1e-4)
        self.eval_enabled = bool(args.val_dataset) or args.split_dataset_ratio > 0

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def epoch(self, step: int) -> float:
        epochs: float = self.args.num_train_epochs
        return round(step / self.max_steps * epochs, 8)

    def learning_rate(self, step: int) -> float:
        warmup = int(self.max_steps * self.args.warmup_ratio)
        if warmup and step <= warmup:
            return self.lr * step / warmup
        progress = (step - warmup) / max(self.max_steps - warmup, 1)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def loss(self, step: int) -> float:
        return 0.35 + 1.8 * math.exp(-3 * step / self.max_steps) + self.random.uniform(0, 0.05)

    def add_train_message(self, logs: dict[str, Any], step: int) -> dict[str, Any]:
        """Exactly the keys ms-swift 4.6.0's ``add_train_message`` (``swift/trainers/
        patcher.py``) appends, in its order: no ``percentage``, the speed in seconds per
        iteration since this run's first step, ``memory(GiB)`` only when memory was used."""
        logs["global_step/max_steps"] = f"{step}/{self.max_steps}"
        elapsed = time.time() - self.start_time
        logs["elapsed_time"] = format_time(elapsed)
        n_steps = step - self.start_step
        train_speed = elapsed / n_steps if n_steps > 0 else 0.0
        logs["remaining_time"] = format_time((self.max_steps - step) * train_speed)
        for key, value in logs.items():
            if isinstance(value, float):
                logs[key] = round(value, 8)
        logs["memory(GiB)"] = round(17.5 + 0.01 * (step % 7), 2)
        logs["train_speed(s/it)"] = round(train_speed, 6)
        return logs

    def log(self, logs: dict[str, Any], step: int) -> None:
        logs = self.add_train_message(logs, step)
        self.log_history.append({**logs, "step": step})
        append_jsonl(self.output_dir / "logging.jsonl", logs)
        _out(str(logs))

    def train_log(self, step: int) -> None:
        self.log(
            {
                "loss": self.loss(step),
                "grad_norm": self.random.uniform(0.3, 2.5),
                "learning_rate": self.learning_rate(step),
                "token_acc": min(0.45 + 0.5 * step / self.max_steps, 0.99),
                "epoch": self.epoch(step),
            },
            step,
        )

    def eval_log(self, step: int) -> None:
        _err(f"Val: 100%|##########| 4/4 [00:00<00:00, {40 + step % 5}.00it/s]")
        self.log(
            {
                "eval_loss": self.loss(step) + 0.1,
                "eval_token_acc": min(0.4 + 0.5 * step / self.max_steps, 0.98),
                "eval_runtime": 0.5,
                "eval_samples_per_second": 20.0,
                "eval_steps_per_second": 8.0,
                "epoch": self.epoch(step),
            },
            step,
        )

    def save_checkpoint(self, step: int) -> Path:
        return save_checkpoint(
            self.args,
            self.output_dir,
            step,
            max_steps=self.max_steps,
            epoch=self.epoch(step),
            log_history=self.log_history,
        )

    def summary(self, step: int, last_checkpoint: Path | None) -> None:
        runtime = time.time() - self.start_time
        self.log(
            {
                "train_runtime": round(runtime, 4),
                "train_samples_per_second": round(step / max(runtime, 1e-6), 3),
                "train_steps_per_second": round(step / max(runtime, 1e-6), 3),
                "total_flos": float(step) * 1.5e12,
                "train_loss": self.loss(step),
                "epoch": self.epoch(step),
            },
            step,
        )
        _err(f"[INFO:swift] last_model_checkpoint: {last_checkpoint}")
        _err("[INFO:swift] best_model_checkpoint: None")
        _err(f"[INFO:swift] images_dir: {self.output_dir / 'images'}")
        # ms-swift 4.6.0 ends logging.jsonl with its run summary (``SwiftSft.train_msg``):
        # no ``global_step/max_steps``, so it is neither progress nor the trainer's summary.
        append_jsonl(
            self.output_dir / "logging.jsonl",
            {
                "train_dataset": f"{self.max_steps:.6f}\u00b10.000000",
                "model_parameter_info": "PeftModelForCausalLM: 0.0000M Params (simulated)",
                "last_model_checkpoint": str(last_checkpoint) if last_checkpoint else None,
                "best_model_checkpoint": None,
                "best_metric": None,
                "global_step": step,
                "log_history": self.log_history[-20:],
                "memory": 17.5,
            },
        )
        _err("[INFO:swift] End time of running main: " + dt.datetime.now().isoformat(" "))


def _fail(message: str) -> int:
    _traceback(
        message,
        [
            ("swift/cli/sft.py", 10, "<module>", "sft_main()"),
            ("swift/pipelines/train/sft.py", 352, "sft_main", "return SwiftSft(args).main()"),
        ],
    )
    return 1


def _validate(args: argparse.Namespace) -> str | None:
    if not args.model:
        return "ValueError: Please set --model <model_id_or_path>`, model: None"
    if not args.dataset:
        return (
            "ValueError: self.dataset: [], self.cached_dataset: []. "
            "Please input the training dataset."
        )
    if args.resume_from_checkpoint:
        ckpt = Path(args.resume_from_checkpoint).absolute()
        if not (ckpt / "trainer_state.json").is_file():
            return f"AssertionError: path: {ckpt}"
    return None


def _sft_worker(argv: list[str]) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    problem = _validate(args)
    if problem is None and args.fail_kind in INPUT_FAULTS:
        problem = _fault_text(args)
    if problem:
        return _fail(problem) if rank == 0 else 1
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    output_dir = output_dir_of(args)
    max_steps = compute_max_steps(
        args.dataset,
        batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        world_size=world_size,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        split_dataset_ratio=args.split_dataset_ratio,
    )
    trainer = _Trainer(args, output_dir, max_steps)
    if trainer.is_master:
        output_dir.mkdir(parents=True, exist_ok=True)
        _err(f"[INFO:swift] rank: {rank}, world_size: {world_size}")
        _err(f"[INFO:swift] output_dir: {output_dir}")
        args_record = {k: v for k, v in vars(args).items() if not k.startswith(("step_", "fail"))}
        args_record.update(output_dir=str(output_dir), swift_version="4.6.0")
        write_json(output_dir / "args.json", args_record)
        _err(f"[INFO:swift] The SftArguments will be saved in: {output_dir / 'args.json'}")
        _err(f"[INFO:swift] The logging file will be saved in: {output_dir / 'logging.jsonl'}")
    time.sleep(args.startup_seconds)
    if "graceful_exit" in args.callbacks:
        _Stop.install()
    if trainer.is_master and args.log_lines_per_second > 0:
        threading.Thread(
            target=_chatter, args=(args.log_lines_per_second,), daemon=True, name="chatter"
        ).start()
    return _train_loop(trainer, resume_step(args))


def _fault_text(args: argparse.Namespace) -> str:
    dataset = args.dataset[0] if args.dataset else ""
    return fault_message(
        args.fail_kind or "oom", dataset=dataset, batch_size=args.per_device_train_batch_size
    )


def _hang(trainer: _Trainer, step: int) -> None:
    """Make no progress (a stuck collective) until asked to stop; then save and finish."""
    while not _Stop.requested:
        time.sleep(trainer.args.step_seconds)
    trainer.save_checkpoint(step)


def _train_loop(trainer: _Trainer, start_step: int) -> int:
    args = trainer.args
    step = start_step
    last_checkpoint: Path | None = None
    trainer.start_time = time.time()
    trainer.start_step = start_step
    while step < trainer.max_steps:
        time.sleep(args.step_seconds)
        step += 1
        # A hang strikes at the first step of a resumed run at the latest.
        fault_step = args.fail_at_step
        if args.fail_kind == "hang" and fault_step is not None:
            fault_step = max(fault_step, start_step + 1)
        if step == fault_step and trainer.is_master:
            if args.fail_kind == "hang":
                _hang(trainer, step)
                break
            if args.fail_kind == "xid" and args.fault_dir:
                report_faulted_card(args.fault_dir, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
            return _fail(_fault_text(args))
        if not trainer.is_master:
            if _Stop.requested:
                break
            continue
        if step == 1 or step % args.logging_steps == 0:
            trainer.train_log(step)
        if trainer.eval_enabled and args.eval_steps and step % args.eval_steps == 0:
            trainer.eval_log(step)
        _Bar.draw(f"Train: {step * 100 // trainer.max_steps:3d}%| {step}/{trainer.max_steps}")
        saved = step % args.save_steps == 0 or step == trainer.max_steps
        if saved or _Stop.requested:
            last_checkpoint = trainer.save_checkpoint(step)
            _err(f"[INFO:swift] Saving model checkpoint to {last_checkpoint}")
        if _Stop.requested:
            _err("[INFO:swift] Received SIGTERM: checkpoint saved, training will stop.")
            break
    if not trainer.is_master:
        return 0
    trainer.summary(step, last_checkpoint)
    if args.crash_after_summary:
        _traceback(
            "RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
            [("swift/cli/sft.py", 10, "<module>", "sft_main()")],
        )
        return 1
    return 0


# --- worker: swift/cli/export.py ----------------------------------------------------------


def _export_worker(argv: list[str]) -> int:
    args = parse_args(argv)
    frames = [
        ("swift/cli/export.py", 5, "<module>", "export_main()"),
        ("swift/arguments/export_args.py", 131, "__post_init__", "self._init_output_dir()"),
    ]
    if not args.adapters:
        _traceback("ValueError: Please set --model <model_id_or_path>`, model: None", frames)
        return 1
    checkpoint = Path(args.adapters[0]).absolute()
    if not (checkpoint / "adapter_config.json").is_file():
        _traceback(f"AssertionError: `{checkpoint}` is not an adapter", frames)
        return 1
    target = Path(args.output_dir).absolute() if args.output_dir else None
    if target is None:
        target = checkpoint.with_name(f"{checkpoint.name}-merged")
    if target.exists() and not args.exist_ok:
        _traceback(f"FileExistsError: args.output_dir: `{target}` already exists.", frames)
        return 1
    _err(f"[INFO:swift] args.output_dir: `{target}`")
    _err("[INFO:swift] merge_device_map: cpu")
    for _ in range(3):
        time.sleep(args.step_seconds)
    if args.export_fail:
        _traceback("RuntimeError: merge failed: out of host memory (simulated)", frames)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    adapter = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    write_json(
        target / "config.json",
        {"architectures": ["SimulatedForCausalLM"], "merged_from": str(checkpoint), **adapter},
    )
    (target / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    _err(f"[INFO:swift] Successfully merged LoRA and saved in {target}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [_TORCHRUN]:
        args = args[1:]
    if not args or args[0] in {"-h", "--help"}:
        _err("usage: swift-sim {sft,export} [swift flags...]")
        return 2
    command, rest = args[0].replace("-", "_"), args[1:]
    if command == "eval":
        from swift_trainer.runner.sim_eval import simulated_eval

        return simulated_eval(rest)
    if command not in {"sft", "rlhf", "export"}:
        _err(f"KeyError: '{command}' (the simulator knows sft, rlhf and export)")
        return 2
    role = os.environ.get(_ROLE_ENV)
    if role == "agent":
        return _agent([command, *rest])
    if role == "worker":
        # rlhf (DPO) trains like sft here: the simulation cares about steps, not the loss.
        return _export_worker(rest) if command == "export" else _sft_worker(rest)
    return _launcher(command, rest)


if __name__ == "__main__":
    sys.exit(main())
