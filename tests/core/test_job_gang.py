"""The Job aggregate with a multi-node job: one placement, a rendezvous, one fate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import DomainError, StaleAssignment
from swift_trainer.core.failure import Failure
from swift_trainer.core.gang import RankPlacement, rank_of, rendezvous_env
from swift_trainer.core.gpu_ledger import LedgerState, decide_ledger, evolve_ledger
from swift_trainer.core.job import JobState, JobStatus, decide, evolve, initial_state, replay
from swift_trainer.core.spec import JobSpec, TrainArgs

JOB = "gang_001"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEAD, PEER, THIRD = "host-a", "host-b", "host-c"
CKPT = "output/gang/checkpoint-5"


def peer(rank: int, runner_id: str, gpus: tuple[int, ...] = (0, 1)) -> RankPlacement:
    return RankPlacement(rank=rank, runner_id=runner_id, gpu_ids=gpus)


class Gang:
    """A 3-node job of 2 GPUs per node, driven command by command."""

    def __init__(
        self, nodes: int = 3, max_retries: int = 2, train_args: TrainArgs | None = None
    ) -> None:
        self.state = initial_state(JOB)
        self.history: list[e.AnyJobEvent] = []
        self.now = T0
        spec = JobSpec(
            data_path="d",
            model_path="m",
            output_dir="output/gang",
            gpu_count=2,
            nodes=nodes,
            max_retries=max_retries,
            train_args=train_args or TrainArgs(),
        )
        self.do(c.SubmitJob(job_id=JOB, spec=spec))

    def do(self, command: c.AnyJobCommand) -> list[e.AnyJobEvent]:
        self.now += timedelta(seconds=1)
        events = decide(self.state, command, self.now)
        for event in events:
            assert (event.at, event.job_id) == (self.now, JOB), "when it was decided, and whose"
            stored = e.decode_event(e.event_type(event), e.encode_event(event))
            assert stored == event, "the event decodes as stored: every field fits its type"
            self.state = evolve(self.state, event)
        self.history.extend(events)
        assert replay(JOB, self.history) == self.state
        return events

    def schedule(self, *peers: RankPlacement) -> list[e.AnyJobEvent]:
        return self.do(
            c.ScheduleJob(
                job_id=JOB,
                attempt=self.state.attempt + 1,
                runner_id=HEAD,
                gpu_ids=(0, 1),
                peers=peers or (peer(1, PEER), peer(2, THIRD)),
            )
        )

    def report(self, kind: type[c.RunnerReport], runner_id: str, **fields: object) -> object:
        return self.do(
            kind(job_id=JOB, attempt=self.state.attempt, runner_id=runner_id, **fields)  # type: ignore[arg-type]
        )

    def running(self) -> None:
        self.schedule()
        self.report(c.ReportStarted, HEAD, pid=10, command=("swift",))
        self.report(c.ReportRendezvous, HEAD, master_addr="10.0.0.1", master_port=29500)
        self.report(c.ReportStarted, PEER, pid=11, command=("swift",))
        self.report(c.ReportStarted, THIRD, pid=12, command=("swift",))


def stops_to(events: list[e.AnyJobEvent]) -> list[str | None]:
    return [x.runner_id for x in events if isinstance(x, e.StopRequested)]


def test_a_placement_names_every_rank_once_on_its_own_runner() -> None:
    gang = Gang()
    for peers, why in [
        ((peer(1, PEER),), "spans 3 runners"),
        ((peer(1, PEER), peer(2, PEER)), "its own runner"),
        ((peer(1, PEER), peer(2, HEAD)), "its own runner"),
        ((peer(2, PEER), peer(1, THIRD)), "numbered 1 to 2"),
        ((peer(1, PEER, (0,)), peer(2, THIRD)), "2 distinct GPUs"),
    ]:
        with pytest.raises(DomainError, match=why):
            gang.schedule(*peers)
    (scheduled,) = gang.schedule()
    assert isinstance(scheduled, e.JobScheduled)
    assert gang.state.peers == scheduled.peers


def test_other_ranks_start_only_once_rank_0_publishes_the_rendezvous() -> None:
    gang = Gang()
    gang.schedule()
    assert gang.report(c.ReportStarted, HEAD, pid=10, command=("swift",))
    with pytest.raises(DomainError) as refused:
        gang.report(c.ReportRendezvous, PEER, master_addr="h", master_port=1)
    assert refused.value.message == (
        "cannot record a rendezvous for job 'gang_001' while it is running: "
        "only rank 0's runner publishes it"
    )
    starts = gang.report(c.ReportRendezvous, HEAD, master_addr="10.0.0.1", master_port=29500)
    assert [(x.rank, x.runner_id, x.master_port) for x in starts] == [  # type: ignore[attr-defined]
        (1, PEER, 29500),
        (2, THIRD, 29500),
    ]
    assert (gang.state.master_addr, gang.state.master_port) == ("10.0.0.1", 29500)
    assert gang.report(c.ReportRendezvous, HEAD, master_addr="x", master_port=2) == []
    assert not gang.state.gang_started
    gang.report(c.ReportStarted, PEER, pid=11, command=("swift",))
    assert gang.report(c.ReportStarted, PEER, pid=11, command=("swift",)) == []
    gang.report(c.ReportStarted, THIRD, pid=12, command=("swift",))
    assert gang.state.gang_started and gang.state.ranks_started == (1, 2)


def test_every_rank_of_a_retry_trains_with_the_batch_the_retry_halved() -> None:
    gang = Gang(train_args=TrainArgs(batch_size=8, gradient_accumulation_steps=2))
    gang.running()
    oom = Failure(kind="oom", detail="CUDA out of memory")
    gang.report(c.ReportFailed, HEAD, exit_code=1, reason="oom", failure=oom)
    halved = TrainArgs(batch_size=4, gradient_accumulation_steps=4)
    assert gang.state.status is JobStatus.QUEUED and gang.state.train_args == halved
    (scheduled,) = gang.schedule()
    assert isinstance(scheduled, e.JobScheduled) and scheduled.train_args == halved
    gang.report(c.ReportStarted, HEAD, pid=20, command=("swift",))
    starts = gang.report(c.ReportRendezvous, HEAD, master_addr="10.0.0.1", master_port=29501)
    assert [x.train_args for x in starts] == [halved, halved]  # type: ignore[attr-defined]


def test_a_data_error_on_any_rank_fails_the_whole_job_at_once_and_stops_the_rest() -> None:
    gang = Gang()
    gang.running()
    bad = Failure(kind="data_error", detail="no dataset", log_line="FileNotFoundError: d")
    events = gang.report(c.ReportFailed, PEER, exit_code=1, reason="no data", failure=bad)
    assert stops_to(events) == [HEAD, THIRD]  # type: ignore[arg-type]
    (failed,) = [x for x in events if isinstance(x, e.JobFailed)]  # type: ignore[attr-defined]
    assert failed.failure == bad and "not retried" in failed.reason
    assert "rank 1 on host-b" in failed.reason
    assert gang.state.status is JobStatus.FAILED and gang.state.peers == ()


def test_a_ranks_nccl_or_unknown_failure_requeues_the_gang_as_a_lost_attempt() -> None:
    for kind in ("nccl", "unknown", "killed"):
        gang = Gang()
        gang.running()
        peer_gone = Failure(kind=kind, detail="the link to rank 0 closed")
        events = gang.report(c.ReportFailed, PEER, exit_code=1, reason="x", failure=peer_gone)
        assert [type(x).__name__ for x in events] == [  # type: ignore[attr-defined]
            "StopRequested",
            "StopRequested",
            "JobLost",
            "JobRequeued",
        ]
        assert gang.state.status is JobStatus.QUEUED and gang.state.retries == 1
        assert gang.state.excluded_gpus == ()


def test_only_rank_0_speaks_for_progress_checkpoints_and_the_outcome() -> None:
    gang = Gang()
    gang.running()
    assert gang.report(c.ReportProgress, PEER, step=3) == []
    assert gang.report(c.ReportCheckpoint, PEER, step=5, path=CKPT) == []
    assert gang.report(c.ReportSucceeded, PEER) == []
    assert gang.state.status is JobStatus.RUNNING
    gang.report(c.ReportSucceeded, HEAD)
    assert gang.state.status is JobStatus.SUCCEEDED
    assert gang.state.peers == ()


def test_a_failed_rank_stops_every_other_rank_and_requeues_once_from_the_checkpoint() -> None:
    gang = Gang()
    gang.running()
    gang.report(c.ReportCheckpoint, HEAD, step=5, path=CKPT)
    events = gang.report(c.ReportFailed, PEER, exit_code=1, reason="NCCL timeout")
    why = "rank 1 on host-b failed (exit code 1): NCCL timeout"
    at = gang.now
    assert events[:3] == [  # type: ignore[index]
        e.StopRequested(
            at=at, job_id=JOB, reason=why, runner_id=runner, attempt=1, intent="requeue"
        )
        for runner in (HEAD, THIRD)
    ] + [e.JobLost(at=at, job_id=JOB, attempt=1, runner_id=PEER, reason=why)]
    assert gang.state.status is JobStatus.QUEUED
    assert (gang.state.retries, gang.state.resume_from) == (1, CKPT)
    assert gang.state.peers == ()
    requeued = [x for x in events if isinstance(x, e.JobRequeued)]  # type: ignore[attr-defined]
    assert "rank 1 on host-b failed" in requeued[0].reason


def test_rank_0_failing_requeues_the_gang_too_until_the_retries_run_out() -> None:
    gang = Gang(max_retries=0)
    gang.running()
    events = gang.report(c.ReportFailed, HEAD, exit_code=137, reason="killed")
    assert stops_to(events) == [PEER, THIRD]  # type: ignore[arg-type]
    assert gang.state.status is JobStatus.FAILED


def test_losing_any_runner_stops_the_rest_and_requeues() -> None:
    gang = Gang()
    gang.running()
    events = gang.do(c.MarkLost(job_id=JOB, attempt=1, reason="runner host-c stopped"))
    why = "lost: runner host-c stopped"
    assert events[:3] == [
        e.StopRequested(
            at=gang.now, job_id=JOB, reason=why, runner_id=runner, attempt=1, intent="requeue"
        )
        for runner in (HEAD, PEER, THIRD)
    ]
    requeued = events[-1]
    assert isinstance(requeued, e.JobRequeued)
    assert (requeued.reason, requeued.retries) == (why, 1), "a loss counts as a retry"
    assert gang.state.status is JobStatus.QUEUED
    stale = c.ReportProgress(job_id=JOB, attempt=1, runner_id=PEER, step=9)
    with pytest.raises(StaleAssignment):
        decide(gang.state, stale, gang.now)


def test_stop_pause_and_cancel_reach_every_rank() -> None:
    for command, intent in (
        (c.StopJob(job_id=JOB, reason="why"), "stop"),
        (c.PauseJob(job_id=JOB, reason="why"), "pause"),
        (c.CancelJob(job_id=JOB, reason="why"), "cancel"),
    ):
        gang = Gang()
        gang.running()
        events = gang.do(command)
        assert events == [
            e.StopRequested(
                at=gang.now, job_id=JOB, reason="why", runner_id=runner, attempt=1, intent=intent
            )
            for runner in (HEAD, PEER, THIRD)
        ]
        assert gang.state.status is JobStatus.STOPPING
        # A rank ending during the stop is part of it; rank 0's report ends the job.
        assert gang.report(c.ReportFailed, PEER, exit_code=1, reason="stopped") == []
        gang.report(c.ReportStopped, HEAD)
        assert gang.state.status in (JobStatus.STOPPED, JobStatus.PAUSED, JobStatus.CANCELLED)


def test_a_cancel_during_a_stop_reaches_every_rank_as_a_cancel() -> None:
    gang = Gang()
    gang.running()
    gang.do(c.StopJob(job_id=JOB))
    events = gang.do(c.CancelJob(job_id=JOB, reason="not needed"))
    assert events == [
        e.StopRequested(
            at=gang.now,
            job_id=JOB,
            reason="not needed",
            runner_id=runner,
            attempt=1,
            intent="cancel",
        )
        for runner in (HEAD, PEER, THIRD)
    ]


def test_a_rank_that_refuses_its_start_stops_rank_0_and_requeues() -> None:
    gang = Gang()
    gang.schedule()
    gang.report(c.ReportStarted, HEAD, pid=10, command=("swift",))
    gang.report(c.ReportRendezvous, HEAD, master_addr="10.0.0.1", master_port=29500)
    events = gang.report(c.RejectAssignment, THIRD, reason="output_dir not shared")
    assert stops_to(events) == [HEAD, PEER]  # type: ignore[arg-type]
    assert gang.state.status is JobStatus.QUEUED


def test_the_rendezvous_starts_each_rank_on_its_gpus_from_the_checkpoint() -> None:
    gang = Gang(nodes=2)
    gang.schedule(peer(1, PEER))
    gang.report(c.ReportStarted, HEAD, pid=10, command=("swift",))
    gang.report(c.ReportCheckpoint, HEAD, step=5, path=CKPT)
    gang.report(c.ReportFailed, HEAD, exit_code=1, reason="NCCL timeout")
    assert gang.state.resume_from == CKPT
    placed = RankPlacement(rank=1, runner_id=PEER, gpu_ids=(2, 3), gpu_uuids=("GPU-b2", "GPU-b3"))
    gang.schedule(placed)
    gang.report(c.ReportStarted, HEAD, pid=20, command=("swift",))
    starts = gang.report(c.ReportRendezvous, HEAD, master_addr="10.0.0.1", master_port=29500)
    assert starts == [
        e.RankStartRequested(
            at=gang.now,
            job_id=JOB,
            attempt=2,
            rank=1,
            runner_id=PEER,
            gpu_ids=(2, 3),
            gpu_uuids=("GPU-b2", "GPU-b3"),
            master_addr="10.0.0.1",
            master_port=29500,
            resume_from=CKPT,
        )
    ]


@pytest.mark.parametrize(
    ("peers", "problem"),
    [
        ((peer(1, PEER),), "it spans 3 runners, got 2"),
        ((peer(1, PEER), peer(2, PEER)), "each rank needs its own runner"),
        ((peer(2, PEER), peer(1, THIRD)), "ranks must be numbered 1 to 2"),
        ((peer(1, PEER), peer(2, THIRD, (0, 0))), "every rank needs 2 distinct GPUs"),
        ((peer(1, PEER), peer(2, THIRD, (0,))), "every rank needs 2 distinct GPUs"),
    ],
)
def test_a_placement_that_does_not_name_every_rank_once_is_refused(
    peers: tuple[RankPlacement, ...], problem: str
) -> None:
    gang = Gang()
    with pytest.raises(DomainError) as refused:
        gang.schedule(*peers)
    assert refused.value.message == f"cannot schedule job 'gang_001' while it is queued: {problem}"


def test_rank_of_and_the_rendezvous_env() -> None:
    peers = (peer(1, PEER),)
    assert [rank_of(r, HEAD, peers) for r in (HEAD, PEER, THIRD)] == [0, 1, None]
    env = rendezvous_env(nodes=2, rank=1, master_addr="h", master_port=7, nproc_per_node=4)
    assert env == {
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "7",
        "NPROC_PER_NODE": "4",
    }


# --- the ledger: one claim for every rank ---------------------------------------------------


def claim(job_id: str, runner_id: str, gpus: tuple[int, ...], *peers: RankPlacement) -> c.ClaimGpus:
    return c.ClaimGpus(job_id=job_id, attempt=1, runner_id=runner_id, gpu_ids=gpus, peers=peers)


def apply(state: LedgerState, command: c.LedgerCommand) -> LedgerState:
    for event in decide_ledger(state, command, T0):
        state = evolve_ledger(state, event)
    return state


def test_a_gang_claim_holds_every_rank_in_one_event_or_nothing() -> None:
    state = apply(LedgerState(), claim("small", PEER, (1,)))
    gang = claim(JOB, HEAD, (0, 1), peer(1, PEER))
    with pytest.raises(DomainError, match="GPU 1 of runner 'host-b'"):
        decide_ledger(state, gang, T0)
    assert set(state.holders) == {(PEER, 1)}, "a refused gang claims nothing"
    state = apply(state, c.ReleaseGpus(job_id="small", attempt=1))
    (claimed,) = decide_ledger(state, gang, T0)
    state = evolve_ledger(state, claimed)
    assert set(state.holders) == {(HEAD, 0), (HEAD, 1), (PEER, 0), (PEER, 1)}
    assert decide_ledger(state, gang, T0) == [], "the same claim again is a no-op"
    state = apply(state, c.ReleaseGpus(job_id=JOB, attempt=1))
    assert state.holders == {}


def test_a_gang_claim_with_two_ranks_on_one_runner_is_refused() -> None:
    with pytest.raises(DomainError, match="its own runner"):
        decide_ledger(LedgerState(), claim(JOB, HEAD, (0,), peer(1, HEAD, (1,))), T0)


def test_a_gang_job_state_without_peers_is_one_node() -> None:
    state = JobState(job_id=JOB, status=JobStatus.RUNNING)
    assert state.gang_started
