"""A real ms-swift 4.6.0 2-node ``swift sft`` on the CPU, two ranks on loopback.

Opt-in like ``test_real_swift.py`` (``SWIFT_TRAINER_REAL_SWIFT=1`` after
``scripts/setup_real_swift.sh``). Each rank's command line and environment are built as the
runner builds them (``build_sft_command`` with ``rendezvous_env``, one CPU process per
node, ``MASTER_PORT`` from the runner's ``free_port``): both ranks get the same arguments,
ms-swift turns the environment into ``torchrun --nnodes 2 --node_rank N --master_addr ...``,
and torch meets over gloo. Measured here: 6 steps, about 25 s, a checkpoint at 3 and 6.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from tests.runner.real_swift import offline_env, tiny_spec

from swift_trainer.core.gang import rendezvous_env
from swift_trainer.runner.rendezvous import free_port
from swift_trainer.runner.swift_command import build_sft_command

pytestmark = [pytest.mark.swift, pytest.mark.timeout(900)]


async def test_real_swift_trains_across_two_nodes_on_loopback(
    swift_venv: Path, tiny: dict[str, str], tmp_path: Path
) -> None:
    spec = msgspec.structs.replace(tiny_spec(tiny, max_steps=6), nodes=2, gpu_count=1)
    port = free_port()
    base = {**offline_env(), "CUDA_VISIBLE_DEVICES": ""}
    processes = []
    logs = []
    for rank in (0, 1):
        invocation = build_sft_command(
            spec,
            output_root=tmp_path / "shared",
            gpu_ids=(0,),
            swift_executable=str(swift_venv / "bin" / "swift"),
            base_env=base,
            rendezvous=rendezvous_env(
                nodes=2, rank=rank, master_addr="127.0.0.1", master_port=port, nproc_per_node=1
            ),
        )
        env = {**invocation.env, "CUDA_VISIBLE_DEVICES": ""}  # a CPU run: no device
        log = tmp_path / f"rank{rank}.log"
        logs.append(log)
        with log.open("wb") as sink:
            processes.append(
                await asyncio.create_subprocess_exec(
                    *invocation.argv, env=env, stdout=sink, stderr=asyncio.subprocess.STDOUT
                )
            )
    codes = [await process.wait() for process in processes]
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    for rank, text in enumerate(texts):
        assert f"--nnodes 2 --node_rank {rank} --master_addr 127.0.0.1" in text
        assert f"rank: {rank}, local_rank: 0, world_size: 2" in text
    output = Path(invocation.output_dir)
    assert (output / "checkpoint-6" / "trainer_state.json").is_file()
    assert (output / "logging.jsonl").is_file()
