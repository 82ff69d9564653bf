"""The ranks of a multi-node job: where each runs, and the rendezvous they share.

Rank 0 is the job's own runner (``runner_id`` and ``gpu_ids`` of the placement); the
others are listed as ``RankPlacement``s. One placement names them all, so the GPU ledger
claims every rank's GPUs in one append and no partial gang can exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

#: The environment every rank's ``swift`` process gets, besides the GPUs it sees.
RENDEZVOUS_ENV: Final = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE")
#: The file rank 0 writes in the job's output folder; other ranks must see it there.
SHARED_OUTPUT_MARKER: Final = ".rendezvous"


class RankPlacement(msgspec.Struct, frozen=True, omit_defaults=True):
    """One rank past rank 0: its runner and the GPUs it holds there."""

    rank: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    gpu_uuids: tuple[str, ...] = ()


def rank_runners(runner_id: str | None, peers: Iterable[RankPlacement]) -> tuple[str, ...]:
    """Every rank's runner, rank 0 first."""
    head = () if runner_id is None else (runner_id,)
    return (*head, *(peer.runner_id for peer in peers))


def rank_of(runner_id: str, head: str | None, peers: Iterable[RankPlacement]) -> int | None:
    """The rank a runner holds in the gang, or None if it holds none."""
    if runner_id == head:
        return 0
    return next((peer.rank for peer in peers if peer.runner_id == runner_id), None)


def rendezvous_env(
    *, nodes: int, rank: int, master_addr: str, master_port: int, nproc_per_node: int
) -> dict[str, str]:
    """What ``swift`` reads to join the others: the same on every rank but ``NODE_RANK``."""
    return {
        "NNODES": str(nodes),
        "NODE_RANK": str(rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "NPROC_PER_NODE": str(nproc_per_node),
    }
