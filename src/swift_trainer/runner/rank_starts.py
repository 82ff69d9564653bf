"""Starting the ranks of a multi-node job on this runner.

Rank 0's runner chooses the rendezvous (its advertised address and a free port), writes
the marker that proves the shared output folder, and reports both; the other ranks' runners
start only on a ``RankStartRequested`` event, check the marker and join. The rules are in
``docs/multi-node.md``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from ..bus.messages import EventEnvelope
from ..core import commands as c
from ..core import events as e
from ..core.gang import rendezvous_env
from ..core.spec import JobSpec
from .dataset_cache import DatasetUnavailable
from .host_checks import resolve_resume
from .rendezvous import RendezvousMarker, free_port, shared_output_problem, write_marker
from .supervisor import AlreadyRunning, LaunchError
from .swift_command import build_sft_command, job_output_dir

if TYPE_CHECKING:
    from .agent import RunnerAgent

_log = logging.getLogger(__name__)


async def publish_marker(
    agent: RunnerAgent, event: e.JobScheduled, spec: JobSpec
) -> RendezvousMarker | None:
    """Rank 0: choose where the ranks meet and prove the output folder to the others
    before any of them starts; None (the start refused) when the marker cannot be written."""
    assert agent.advertise_address is not None
    marker = RendezvousMarker(
        job_id=event.job_id,
        attempt=event.attempt,
        master_addr=agent.advertise_address,
        master_port=free_port(),
    )
    try:
        await asyncio.to_thread(write_marker, job_output_dir(agent.output_root, spec), marker)
    except OSError as exc:
        agent._reject(event, f"cannot write the rendezvous marker: {exc}")
        return None
    return marker


def head_env(event: e.JobScheduled, marker: RendezvousMarker) -> dict[str, str]:
    """Rank 0's rendezvous environment."""
    return rendezvous_env(
        nodes=len(event.peers) + 1,
        rank=0,
        master_addr=marker.master_addr,
        master_port=marker.master_port,
        nproc_per_node=len(event.gpu_ids),
    )


def rendezvous_report(
    event: e.JobScheduled, runner_id: str, marker: RendezvousMarker
) -> c.ReportRendezvous:
    """What starts the other ranks, once rank 0 runs."""
    return c.ReportRendezvous(
        job_id=event.job_id,
        attempt=event.attempt,
        runner_id=runner_id,
        master_addr=marker.master_addr,
        master_port=marker.master_port,
    )


async def on_rank_start(
    agent: RunnerAgent, envelope: EventEnvelope, event: e.RankStartRequested
) -> None:
    """Start one rank past rank 0 of a multi-node job, joining rank 0's rendezvous."""
    if envelope.event_id in agent.handled:
        return
    running = agent._running_job(event.job_id)
    if running is not None and running.attempt == event.attempt:
        return  # a redelivery: this rank runs already
    as_scheduled = e.JobScheduled(
        at=event.at,
        job_id=event.job_id,
        attempt=event.attempt,
        runner_id=agent.runner_id,
        gpu_ids=event.gpu_ids,
        gpu_uuids=event.gpu_uuids,
        resume_from=event.resume_from,
    )
    stored = await agent._stored_state(event.job_id)
    if stored is not None and (
        stored.attempt != event.attempt or stored.status not in ("scheduled", "running")
    ):
        _log.info("not starting rank %d of %s: it has moved on", event.rank, event.job_id)
    elif running is not None:
        agent.supervisor.request_stop(running.key, grace_period_s=agent.grace_period_s)
        agent._reject(as_scheduled, f"attempt {running.attempt} of this job is still here")
    else:
        problem = await agent._check_assignment(as_scheduled)
        if problem is None:
            await _start_rank(agent, event, as_scheduled)
        else:
            agent._reject(as_scheduled, problem)
    agent.handled.add(envelope.event_id)


async def _start_rank(
    agent: RunnerAgent, event: e.RankStartRequested, as_scheduled: e.JobScheduled
) -> None:
    spec = await agent.job_spec(event.job_id)
    if spec is None:
        agent._reject(as_scheduled, f"no JobSubmitted for job {event.job_id}")
        return
    if event.train_args is not None:  # a retry changed them: the same as rank 0's
        spec = msgspec.structs.replace(spec, train_args=event.train_args)
    expected = RendezvousMarker(
        job_id=event.job_id,
        attempt=event.attempt,
        master_addr=event.master_addr,
        master_port=event.master_port,
    )
    output_dir = job_output_dir(agent.output_root, spec)
    problem = await asyncio.to_thread(shared_output_problem, output_dir, expected)
    if problem is not None:
        agent._reject(as_scheduled, problem)
        return
    try:
        dataset_files = await agent.datasets.resolve(spec)
    except DatasetUnavailable as exc:
        agent._reject(as_scheduled, exc.message)
        return
    try:
        invocation = build_sft_command(
            spec,
            output_root=agent.output_root,
            gpu_ids=event.gpu_ids,
            resume_from=resolve_resume(event.resume_from).path,
            swift_executable=agent.swift_executable,
            base_env=agent.base_env,
            gpu_uuids=event.gpu_uuids,
            dataset_files=dataset_files,
            rendezvous=rendezvous_env(
                nodes=spec.nodes,
                rank=event.rank,
                master_addr=event.master_addr,
                master_port=event.master_port,
                nproc_per_node=len(event.gpu_ids),
            ),
        )
        pid = await agent.supervisor.start_job(
            event.job_id,
            event.attempt,
            invocation,
            agent.reporters.job(event.job_id, event.attempt, rank=event.rank),
            gpu_ids=event.gpu_ids,
        )
    except (LaunchError, AlreadyRunning, ValueError) as exc:
        agent._reject(as_scheduled, str(exc))
        return
    _log.info(
        "started rank %d of attempt %d of %s: pid %d",
        event.rank,
        event.attempt,
        event.job_id,
        pid,
    )
