"""Each kind of failure is told apart from the exit, the output and the GPUs' health."""

from __future__ import annotations

import pytest

from swift_trainer.core.failure import FAILURE_KINDS
from swift_trainer.runner.failure_classifier import GpuFault, classify_failure

TRACE = ["Traceback (most recent call last):", '  File "swift/cli/sft.py", line 10']


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
            "has a total capacity of 79.25 GiB of which 1.12 GiB is free.",
            "oom",
        ),
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "oom"),
        (
            "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
            "ProcessGroupNCCL.cpp:1970, unhandled system error, NCCL version 2.20.5",
            "nccl",
        ),
        (
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, "
            "OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600031 "
            "milliseconds before timing out.",
            "nccl",
        ),
        ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "gpu_fault"),
        ("RuntimeError: CUDA error: unspecified launch failure", "gpu_fault"),
        (
            "ValueError: The local path does not exist, dataset_id: `/data/x.jsonl`. "
            "os.path.exists(dataset_id): False",
            "data_error",
        ),
        (
            "ValueError: self.dataset: [], self.cached_dataset: []. Please input the training "
            "dataset.",
            "data_error",
        ),
        ("FileNotFoundError: Unable to find '/data/train.jsonl'", "data_error"),
        ("ValueError: remaining_argv: ['--learning_rte', '1e-4']", "user_error"),
        ("ModuleNotFoundError: No module named 'flash_attn'", "user_error"),
        (
            "OSError: Qwen/Nope is not a local folder and is not a valid model identifier "
            "listed on 'https://huggingface.co/models'",
            "user_error",
        ),
        ("Signal 9 (SIGKILL) received by PID 4242", "killed"),
    ],
)
def test_the_decisive_line_decides_the_kind(line: str, kind: str) -> None:
    failure = classify_failure(1, [*TRACE, line, ""])
    assert failure.kind == kind
    assert failure.log_line == line
    assert failure.detail


def test_out_of_memory_wins_over_the_nccl_errors_it_causes() -> None:
    lines = [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970",
    ]
    assert classify_failure(1, lines).kind == "oom"


def test_nvml_faults_on_the_jobs_gpus_win_over_the_log() -> None:
    lines = ["torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970"]
    failure = classify_failure(1, lines, [GpuFault(uuid="GPU-1", reason="Xid 79")])
    assert failure.kind == "gpu_fault"
    assert failure.gpus == ("GPU-1",)
    assert "Xid 79" in failure.detail
    assert failure.log_line == lines[0]


def test_a_signal_without_a_decisive_line_is_killed() -> None:
    failure = classify_failure(-9, ["step 3"])
    assert (failure.kind, failure.detail) == ("killed", "the process was killed by SIGKILL")
    assert classify_failure(137, []).kind == "killed"


def test_an_unknown_exit_is_a_lost_runner() -> None:
    assert classify_failure(None, []).kind == "runner_lost"


def test_nothing_decisive_is_unknown_with_the_last_line() -> None:
    failure = classify_failure(3, ["something odd", "  the end  ", ""])
    assert (failure.kind, failure.log_line) == ("unknown", "the end")


def test_an_import_warning_is_not_a_user_error() -> None:
    failure = classify_failure(1, ["[WARNING] ImportError ignored: flash_attn missing"])
    assert failure.kind == "unknown"


def test_a_long_line_is_clipped() -> None:
    failure = classify_failure(1, ["torch.OutOfMemoryError: " + "x" * 5000])
    assert failure.log_line is not None
    assert len(failure.log_line) == 1024


def test_every_kind_the_classifier_returns_is_known() -> None:
    samples = [
        classify_failure(1, ["CUDA out of memory"]),
        classify_failure(-9, []),
        classify_failure(None, []),
        classify_failure(1, []),
    ]
    assert {f.kind for f in samples} <= set(FAILURE_KINDS)
