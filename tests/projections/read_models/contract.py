"""The read-model contract: one suite, subclassed once per backend.

A backend's test module subclasses ``ReadModelContract`` and says how to make a fresh read
model (and, where it can, how to reopen one on the same storage). Everything a backend
promises is pinned here, so the memory and Redis backends cannot drift apart.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swift_trainer.core import events as e
from swift_trainer.core.job import JobStatus
from swift_trainer.core.progress import MetricSample
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.spec import TrainArgs
from swift_trainer.core.store import RecordedEvent
from swift_trainer.projections.read_models import (
    InvalidCursor,
    JobSummary,
    Limits,
    LogLine,
    QueueEntry,
    QueueView,
    ReadModel,
    rebuild,
)

from .history import T0, History, ListEventStore, fleet_history, random_history

SMALL = Limits(metric_points=5, events_per_job=7, log_lines=4)

#: The history the property test redelivers: every kind of event, deletions, gaps.
PROPERTY_HISTORY = random_history(7, jobs=4, steps=60, gap=3).records


class ReadModelContract(ABC):
    #: False where a read model cannot outlive its instance (the memory backend).
    survives_restart: bool = True

    @abstractmethod
    async def create_read_model(self, limits: Limits | None = None) -> ReadModel:
        """A fresh, empty read model on storage no other test sees."""

    async def reopen(self, read_model: ReadModel) -> ReadModel:
        """A new instance on the same storage, as after a process restart."""
        raise NotImplementedError

    async def dispose(self, read_model: ReadModel) -> None:
        await read_model.close()

    @pytest.fixture
    async def read_model(self) -> AsyncIterator[ReadModel]:
        read_model = await self.create_read_model()
        try:
            yield read_model
        finally:
            await self.dispose(read_model)

    @pytest.fixture
    async def small(self) -> AsyncIterator[ReadModel]:
        read_model = await self.create_read_model(SMALL)
        try:
            yield read_model
        finally:
            await self.dispose(read_model)

    # --- job summaries --------------------------------------------------------------------

    async def test_empty_read_model(self, read_model: ReadModel) -> None:
        assert await read_model.applied_position() == 0
        assert await read_model.get_job("nope") is None
        assert await read_model.get_job_json("nope") is None
        assert (await read_model.list_jobs()).items == []
        assert set((await read_model.count_by_status()).values()) == {0}
        assert await read_model.job_events("nope") == []
        assert await read_model.metric_history("nope") == []
        assert await read_model.processor_state() == QueueProcessorState()

    async def test_full_lifecycle_summary(self, read_model: ReadModel) -> None:
        h = History()
        args = TrainArgs(learning_rate=2e-4, lora_rank=8)
        await read_model.apply_many(
            h.submit("train-1", priority=9, gpu_count=2, labels={"team": "vision"}, train_args=args)
        )
        job = await read_model.get_job("train-1")
        assert job is not None
        assert job.status is JobStatus.QUEUED
        assert (job.priority, job.gpu_count, job.labels) == (9, 2, {"team": "vision"})
        assert (job.data_path, job.model_path) == (
            "AI-ModelScope/coco#20000",
            "Qwen/Qwen2.5-VL-7B-Instruct",
        )
        assert job.output_dir == "output/train-1"
        assert job.train_args == args
        assert job.submitted_at == h.records[0].recorded_at
        assert job.submitted_position == h.records[0].position
        assert job.started_at is None
        assert job.progress is None

        await read_model.apply_many(
            [*h.schedule("train-1", runner="runner-b"), *h.started("train-1")]
        )
        job = await read_model.get_job("train-1")
        assert job is not None
        assert job.status is JobStatus.RUNNING
        assert (job.runner_id, job.gpu_ids, job.attempt, job.pid) == ("runner-b", (0, 1), 1, 4242)
        assert job.started_at == h.records[-1].recorded_at

        for record in [*h.progress("train-1", 25, loss=1.5), *h.checkpoint("train-1", 25)]:
            assert await read_model.apply(record)
        await read_model.apply_many(h.succeed("train-1"))
        job = await read_model.get_job("train-1")
        assert job is not None
        assert job.status is JobStatus.SUCCEEDED
        assert job.runner_id is None
        assert job.gpu_ids == ()
        assert job.last_runner_id == "runner-b"
        assert job.finished_at == job.updated_at == h.records[-1].recorded_at
        assert job.version == len(h.records)
        assert job.updated_position == h.records[-1].position
        assert job.progress is not None
        assert job.progress.percent == 100.0
        assert job.last_checkpoint is not None
        assert job.last_checkpoint.path == "output/train-1/v0/checkpoint-25"
        raw = await read_model.get_job_json("train-1")
        assert raw is not None
        assert msgspec.json.decode(raw, type=JobSummary) == job

    async def test_failure_stop_and_resume_fields(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        h.fail("a", exit_code=137, reason="killed", stderr_tail="oom")
        h.running("b")
        h.stop("b", reason="wrong dataset")
        h.stopped("b")
        await read_model.apply_many(h.records)
        a, b = await read_model.get_job("a"), await read_model.get_job("b")
        assert a is not None
        assert b is not None
        assert (a.status, a.exit_code, a.failure_reason) == (JobStatus.FAILED, 137, "killed")
        assert (b.status, b.stop_reason) == (JobStatus.STOPPED, "wrong dataset")

        await read_model.apply_many(h.start_job("a"))
        a = await read_model.get_job("a")
        assert a is not None
        assert (a.status, a.exit_code, a.failure_reason, a.finished_at) == (
            JobStatus.QUEUED,
            None,
            None,
            None,
        )

    async def test_lost_job_is_requeued_with_a_retry(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        h.checkpoint("a", 10)
        h.lose("a")
        await read_model.apply_many(h.records)
        job = await read_model.get_job("a")
        assert job is not None
        assert (job.status, job.retries, job.runner_id) == (JobStatus.QUEUED, 1, None)
        assert job.resume_from == "output/a/v0/checkpoint-10"

    async def test_progress_percent_and_loss_curve(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        h.progress("a", 10, max_steps=40, loss=2.0, learning_rate=1e-4, elapsed_s=10.0)
        h.progress("a", 15, max_steps=40)  # nothing to plot: no point
        h.progress("a", 20, max_steps=40, loss=1.0, learning_rate=5e-5, remaining_s=20.0)
        await read_model.apply_many(h.records)
        job = await read_model.get_job("a")
        assert job is not None
        assert job.progress is not None
        assert (job.progress.step, job.progress.max_steps, job.progress.percent) == (20, 40, 50.0)
        assert (job.progress.loss, job.progress.learning_rate) == (1.0, 5e-5)
        assert (job.progress.remaining_s, job.progress.elapsed_s) == (20.0, None)
        curve = await read_model.metric_history("a")
        assert [(p.step, p.loss, p.learning_rate) for p in curve] == [
            (10, 2.0, 1e-4),
            (20, 1.0, 5e-5),
        ]
        assert curve[-1].at == h.records[-1].recorded_at
        # A report with only a grad norm is a point too (the dashboard's grad-norm chart).
        await read_model.apply_many(h.progress("a", 25, max_steps=40, grad_norm=0.7))
        curve = await read_model.metric_history("a")
        assert [(p.step, p.loss, p.grad_norm) for p in curve][-1] == (25, None, 0.7)
        assert curve[0].grad_norm is None

    async def test_steps_sent_along_are_points_too(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        samples = (MetricSample(step=5, loss=2.0), MetricSample(step=10, learning_rate=1e-4))
        h.progress("a", 15, loss=1.5, earlier=samples)
        await read_model.apply_many(h.records)
        curve = await read_model.metric_history("a")
        assert [(p.step, p.loss, p.learning_rate) for p in curve] == [
            (5, 2.0, None),
            (10, None, 1e-4),
            (15, 1.5, None),
        ]
        job = await read_model.get_job("a")
        assert job is not None and job.progress is not None and job.progress.step == 15

    async def test_loss_curve_keeps_the_newest_points(self, small: ReadModel) -> None:
        h = History()
        await small.apply_many(h.running("a"))
        for step in range(1, 5):  # one at a time and then in a batch: both trim
            await small.apply_many(h.progress("a", step, loss=float(step)))
        batch: list[RecordedEvent] = []
        for step in range(5, 13):
            batch += h.progress("a", step, loss=float(step))
        await small.apply_many(batch)
        assert [p.step for p in await small.metric_history("a")] == [8, 9, 10, 11, 12]

    async def test_checkpoints_and_exports(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        h.checkpoint("a", 100)
        h.checkpoint("a", 200)
        h.succeed("a")
        h.export("a")
        h.export_started("a")
        h.export_succeeded("a")
        h.export("a", checkpoint="checkpoint-100")
        h.export_failed("a")
        await read_model.apply_many(h.records)
        job = await read_model.get_job("a")
        assert job is not None
        assert [(cp.step, cp.path) for cp in job.checkpoints] == [
            (100, "output/a/v0/checkpoint-100"),
            (200, "output/a/v0/checkpoint-200"),
        ]
        assert job.last_checkpoint == job.checkpoints[-1]
        first, second = job.exports
        assert (first.export_id, first.status, first.checkpoint) == (
            "a-export-1",
            "succeeded",
            "output/a/v0/checkpoint-200",
        )
        assert first.artifact_path == "output/a/a-export-1-merged"
        assert (second.status, second.reason, second.artifact_path) == ("failed", "x", None)

    async def test_deleted_job_disappears(self, read_model: ReadModel) -> None:
        h = History()
        h.running("gone")
        h.progress("gone", 5, loss=1.0)
        h.stop("gone")
        h.stopped("gone")
        h.submit("kept")
        await read_model.apply_many(h.records)
        await read_model.append_logs("gone", [LogLine(seq=1, text="hello")])
        await read_model.apply_many(h.delete("gone"))

        assert await read_model.get_job("gone") is None
        assert await read_model.get_job_json("gone") is None
        assert [j.job_id for j in (await read_model.list_jobs()).items] == ["kept"]
        assert (await read_model.list_jobs(status=JobStatus.STOPPED)).items == []
        counts = await read_model.count_by_status()
        assert (counts[JobStatus.STOPPED], counts[JobStatus.QUEUED]) == (0, 1)
        assert await read_model.job_events("gone") == []
        assert await read_model.metric_history("gone") == []
        assert await read_model.logs("gone") == []

        # The id may be used again; the new job starts with a clean record.
        await read_model.apply_many(h.submit("gone", priority=1))
        job = await read_model.get_job("gone")
        assert job is not None
        assert (job.status, job.priority, job.progress, job.checkpoints) == (
            JobStatus.QUEUED,
            1,
            None,
            (),
        )
        assert [x.type for x in await read_model.job_events("gone")] == [
            "JobSubmitted",
            "JobQueued",
        ]
        assert [j.job_id for j in (await read_model.list_jobs()).items] == ["gone", "kept"]

    async def test_deleted_and_resubmitted_in_one_batch(self, read_model: ReadModel) -> None:
        h = History()
        h.submit("a", priority=3)
        h.stop("a")
        h.delete("a")
        h.submit("a", priority=3)
        await read_model.apply_many(h.records)
        page = await read_model.list_jobs(priority=3)
        assert [(j.job_id, j.submitted_position) for j in page.items] == [
            ("a", h.records[-2].position)
        ]
        assert [x.type for x in await read_model.job_events("a")] == ["JobSubmitted", "JobQueued"]

    # --- lists and counts -----------------------------------------------------------------

    async def test_list_filters_and_pagination(self, read_model: ReadModel) -> None:
        h = History()
        for n in range(30):
            h.submit(f"j{n:02d}", priority=n % 3, auto_start=n % 4 != 0)
        await read_model.apply_many(h.records)
        newest_first = [f"j{n:02d}" for n in reversed(range(30))]

        async def page_through(**filters: object) -> list[str]:
            seen: list[str] = []
            cursor = None
            while True:
                page = await read_model.list_jobs(limit=4, cursor=cursor, **filters)  # type: ignore[arg-type]
                seen += [j.job_id for j in page.items]
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor

        assert await page_through() == newest_first
        assert await page_through(priority=1) == [j for j in newest_first if int(j[1:]) % 3 == 1]
        held = [j for j in newest_first if int(j[1:]) % 4 == 0]
        assert await page_through(status=JobStatus.HELD) == held
        assert await page_through(status=JobStatus.HELD, priority=0) == [
            j for j in held if int(j[1:]) % 3 == 0
        ]
        assert await page_through(status=JobStatus.RUNNING) == []
        exact = await read_model.list_jobs(limit=30)
        assert len(exact.items) == 30
        assert exact.next_cursor is None

    async def test_owner_filter_reads_the_owners_own_index(self, read_model: ReadModel) -> None:
        h = History()
        owners = ["alice", "bob", None, "alice:s", "al%3Aice"]
        for n in range(25):
            h.submit(f"j{n:02d}", priority=n % 2, auto_start=n % 3 != 0, owner=owners[n % 5])
        h.stop("j05")  # alice's, queued -> stopped: it moves between her status indexes
        h.delete("j10")  # alice's, gone from all of them
        await read_model.apply_many(h.records)

        async def page_through(**filters: object) -> list[str]:
            seen: list[str] = []
            cursor = None
            while True:
                page = await read_model.list_jobs(limit=2, cursor=cursor, **filters)  # type: ignore[arg-type]
                seen += [j.job_id for j in page.items]
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor

        alice = ["j20", "j15", "j05", "j00"]
        assert await page_through(owner="alice") == alice
        assert await page_through(owner="alice", status=JobStatus.STOPPED) == ["j05"]
        assert await page_through(owner="alice", status=JobStatus.HELD) == ["j15", "j00"]
        assert await page_through(owner="alice", priority=0) == ["j20", "j00"]
        assert await page_through(owner="alice", status=JobStatus.QUEUED, priority=0) == ["j20"]
        # Names that look like another owner's escaped index stay apart.
        assert await page_through(owner="alice:s") == ["j23", "j18", "j13", "j08", "j03"]
        assert await page_through(owner="al%3Aice") == ["j24", "j19", "j14", "j09", "j04"]
        assert await page_through(owner="al:ice") == []
        assert await page_through(owner="carol") == []
        # Unowned jobs are listed with everyone's, under no owner.
        assert "j02" in await page_through()
        assert all(j.owner == "bob" for j in (await read_model.list_jobs(owner="bob")).items)

    async def test_get_jobs_reads_several_in_order(self, read_model: ReadModel) -> None:
        h = History()
        for n in range(3):
            h.submit(f"g{n}")
        h.delete("g1")
        await read_model.apply_many(h.records)
        found = await read_model.get_jobs(["g2", "g1", "nope", "g0", "g2"])
        assert [None if j is None else j.job_id for j in found] == ["g2", None, None, "g0", "g2"]
        assert found[0] == await read_model.get_job("g2")
        assert await read_model.get_jobs([]) == []

    async def test_pages_are_stable_while_jobs_arrive_and_change(
        self, read_model: ReadModel
    ) -> None:
        h = History()
        for n in range(10):
            h.submit(f"old{n}")
        await read_model.apply_many(h.records)
        first = await read_model.list_jobs(limit=3)
        assert [j.job_id for j in first.items] == ["old9", "old8", "old7"]
        h.submit("new0")
        h.reprioritise("old8", 1)  # moves it in the priority index, not in the list order
        h.reprioritise("old2", 1)
        await read_model.apply_many(h.records)
        rest: list[str] = []
        cursor = first.next_cursor
        while cursor is not None:
            page = await read_model.list_jobs(limit=3, cursor=cursor)
            rest += [j.job_id for j in page.items]
            cursor = page.next_cursor
        assert rest == [f"old{n}" for n in reversed(range(7))]
        assert [j.job_id for j in (await read_model.list_jobs(priority=1)).items] == [
            "old8",
            "old2",
        ]

    async def test_bad_cursor_and_limit_are_refused(self, read_model: ReadModel) -> None:
        with pytest.raises(InvalidCursor):
            await read_model.list_jobs(cursor="not-a-cursor")
        with pytest.raises(ValueError, match="limit"):
            await read_model.list_jobs(limit=0)
        with pytest.raises(ValueError, match="limit"):
            await read_model.job_events("a", limit=100_000)

    async def test_counts_per_status(self, read_model: ReadModel) -> None:
        h = History()
        h.submit("q1")
        h.submit("q2")
        h.submit("held", auto_start=False)
        h.running("run")
        h.running("done")
        h.succeed("done")
        await read_model.apply_many(h.records)
        counts = await read_model.count_by_status()
        assert set(counts) == {s for s in JobStatus if s is not JobStatus.DELETED}
        expected = {JobStatus.QUEUED: 2, JobStatus.HELD: 1, JobStatus.RUNNING: 1}
        expected[JobStatus.SUCCEEDED] = 1
        assert {s: n for s, n in counts.items() if n} == expected

    # --- event log, logs ------------------------------------------------------------------

    async def test_events_paging(self, read_model: ReadModel) -> None:
        h = History(position_gap=2)
        h.running("a")
        h.submit("other")
        for step in range(1, 6):
            h.progress("a", step, loss=1.0)
        h.fail("a", stderr_tail="x" * 5000 + "CUDA out of memory")
        await read_model.apply_many(h.records)
        mine = [r for r in h.records if r.stream_id == "job-a"]
        first = await read_model.job_events("a", limit=3)
        assert [x.position for x in first] == [r.position for r in mine[:3]]
        assert [x.type for x in first] == ["JobSubmitted", "JobQueued", "JobScheduled"]
        assert first[0].data["spec"]["output_dir"] == "output/a"
        assert first[0].actor == "tests"
        assert (first[0].event_id, first[0].version) == (mine[0].event_id, 1)
        rest = await read_model.job_events("a", after=first[-1].position, limit=100)
        assert [x.position for x in rest] == [r.position for r in mine[3:]]
        failed = rest[-1]
        assert failed.type == "JobFailed"
        assert failed.data["stderr_tail"].endswith("CUDA out of memory")
        assert len(failed.data["stderr_tail"]) < 1100
        assert "job_id" not in failed.data
        assert await read_model.job_events("a", after=mine[-1].position) == []

    async def test_event_log_keeps_the_newest(self, small: ReadModel) -> None:
        h = History()
        h.running("a")
        for step in range(1, 10):
            h.progress("a", step)
        await small.apply_many(h.records[:5])
        await small.apply_many(h.records[5:])
        assert [x.position for x in await small.job_events("a")] == [
            r.position for r in h.records[-7:]
        ]

    async def test_logs_capping_paging_and_redelivery(self, small: ReadModel) -> None:
        lines = [LogLine(seq=n, text=f"line {n}", at=T0, attempt=1) for n in range(1, 4)]
        assert await small.append_logs("a", lines) == 3
        assert await small.append_logs("a", lines[1:]) == 0  # redelivered
        assert await small.logs("a", after=1, limit=1) == [lines[1]]
        more = [LogLine(seq=n, text=f"line {n}", stream="stderr") for n in (6, 4, 5)]
        assert await small.append_logs("a", more) == 3
        assert [x.seq for x in await small.logs("a")] == [3, 4, 5, 6]  # capped at 4
        assert [x.seq for x in await small.logs("a", limit=2)] == [5, 6]  # the tail
        assert [x.seq for x in await small.logs("a", after=0, limit=2)] == [3, 4]
        assert [x.seq for x in await small.logs("a", after=4)] == [5, 6]
        assert await small.logs("a", after=6) == []
        assert await small.append_logs("a", []) == 0
        assert await small.logs("other") == []

    # --- redelivery, restart, rebuild -----------------------------------------------------

    async def test_a_late_line_of_another_rank_is_kept_in_its_place(
        self, read_model: ReadModel
    ) -> None:
        rank0 = [LogLine(seq=n, text=f"rank 0 line {n}", rank=0) for n in (10, 30)]
        rank1 = [LogLine(seq=n, text=f"rank 1 line {n}", rank=1) for n in (20, 25)]
        assert await read_model.append_logs("g", rank0) == 2
        assert await read_model.append_logs("g", rank1) == 2
        assert await read_model.append_logs("g", rank1) == 0  # redelivered
        stored = await read_model.logs("g")
        assert [(x.seq, x.rank) for x in stored] == [(10, 0), (20, 1), (25, 1), (30, 0)]

    async def test_redelivered_events_change_nothing(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        h.progress("a", 1, loss=2.0)
        h.checkpoint("a", 1)
        await read_model.apply_many(h.records)
        before = await read_model.snapshot()
        assert before.applied_position == h.records[-1].position
        assert not await read_model.apply(h.records[-1])  # the same position again
        assert not await read_model.apply(h.records[2])  # a lower one
        assert await read_model.apply_many(h.records) == 0
        assert await read_model.apply_many([]) == 0
        assert await read_model.snapshot() == before

        new = h.progress("a", 2, loss=1.0)
        # A batch mixing redeliveries with news applies only the news, once.
        assert await read_model.apply_many([*h.records[3:], *h.records[:2], *new]) == 1
        assert [p.step for p in await read_model.metric_history("a")] == [1, 2]

    async def test_undecodable_events_are_skipped_but_counted(self, read_model: ReadModel) -> None:
        h = History()
        h.submit("a")
        unknown = h.record("job-a", e.JobHeld(at=T0, job_id="a"), type_name="JobTeleported")
        broken = h.record("job-a", e.JobHeld(at=T0, job_id="a"), payload=b"{not json")
        h.submit("b")
        assert await read_model.apply_many(h.records) == len(h.records)
        assert await read_model.applied_position() == h.records[-1].position
        assert {j.job_id for j in (await read_model.list_jobs()).items} == {"a", "b"}
        assert unknown.position not in [x.position for x in await read_model.job_events("a")]
        assert broken.position < h.records[-1].position

    async def test_processor_state(self, read_model: ReadModel) -> None:
        h = History()
        h.pause("driver update")
        await read_model.apply_many(h.records)
        state = await read_model.processor_state()
        assert (state.paused, state.reason, state.version) == (True, "driver update", 1)
        await read_model.apply_many(h.unpause())
        state = await read_model.processor_state()
        assert (state.paused, state.version, state.changed_at) == (
            False,
            2,
            h.records[-1].recorded_at,
        )

    async def test_applied_position_survives_restart(self, read_model: ReadModel) -> None:
        if not self.survives_restart:
            pytest.skip("this backend lives and dies with its process")
        h = random_history(11)
        half = len(h.records) // 2
        await read_model.apply_many(h.records[:half])
        again = await self.reopen(read_model)
        try:
            assert await again.applied_position() == h.records[half - 1].position
            # The restarted projector is handed an overlapping range, as a redelivery would.
            assert await again.apply_many(h.records[half - 5 :]) == len(h.records) - half
            once = await self.create_read_model()
            try:
                await once.apply_many(h.records)
                assert await again.snapshot() == await once.snapshot()
            finally:
                await self.dispose(once)
        finally:
            await again.close()

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_rebuild_equals_live(self, read_model: ReadModel, seed: int) -> None:
        h = random_history(seed, jobs=6, steps=250, gap=seed)
        rng = random.Random(seed)
        remaining = list(h.records)
        while remaining:  # live: batches of all sizes, some events one at a time
            size = rng.choice([1, 1, 2, 5, 17])
            batch, remaining = remaining[:size], remaining[size:]
            if size == 1:
                await read_model.apply(batch[0])
            else:
                await read_model.apply_many(batch)
        live = await read_model.snapshot()
        assert live.applied_position == h.records[-1].position
        assert live.stray_keys == []
        assert live.jobs, "the history should leave some jobs behind"

        fresh = await self.create_read_model()
        try:
            assert await rebuild(ListEventStore(h.records), fresh, batch_size=50) == len(h.records)
            assert await fresh.snapshot() == live
        finally:
            await self.dispose(fresh)
        # In place, too: the wipe leaves nothing behind that the replay would not restore.
        await rebuild(ListEventStore(h.records), read_model, batch_size=1000)
        assert await read_model.snapshot() == live

    @pytest.mark.parametrize("seed", [1, 2])
    async def test_rebuild_equals_live_on_a_fleet_at_the_caps(self, seed: int) -> None:
        """A rebuild writes each job once per large batch, skipping the trims a job new to
        the read model does not need; live applies go event by event and trim. Same result."""
        h = fleet_history(seed)
        rng = random.Random(seed)
        live = await self.create_read_model(SMALL)
        rebuilt = await self.create_read_model(SMALL)
        try:
            remaining = list(h.records)
            while remaining:
                size = rng.choice([1, 1, 3, 9, 40])
                batch, remaining = remaining[:size], remaining[size:]
                await live.apply_many(batch)
            expected = await live.snapshot()
            assert any(len(v) == SMALL.events_per_job for v in expected.events.values())
            assert any(len(v) == SMALL.metric_points for v in expected.metrics.values())
            assert await rebuild(ListEventStore(h.records), rebuilt) == len(h.records)
            assert await rebuilt.snapshot() == expected
            # And in batches that split jobs' histories, some jobs known, some new.
            await rebuild(ListEventStore(h.records), rebuilt, batch_size=97)
            assert await rebuilt.snapshot() == expected
        finally:
            await self.dispose(live)
            await self.dispose(rebuilt)

    @settings(
        max_examples=50,
        deadline=None,
        # Each backend's subclass runs this one method, on purpose: that is the contract.
        suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
    )
    @given(
        deliveries=st.lists(
            st.tuples(
                st.integers(0, len(PROPERTY_HISTORY)),  # how far back the delivery starts
                st.integers(0, 12),  # how far past the delivered end it goes
                st.integers(0, len(PROPERTY_HISTORY)),  # older events trailing it (0: none)
            ),
            max_size=25,
        ),
    )
    async def test_any_redelivery_mix_equals_applying_once(
        self, deliveries: list[tuple[int, int, int]]
    ) -> None:
        records = PROPERTY_HISTORY
        batches: list[Sequence[RecordedEvent]] = []
        delivered = 0
        # A delivery never skips past what was delivered, but may start anywhere before it,
        # stop short of it (a pure redelivery), or carry older events after newer ones.
        for back, ahead, trail in deliveries:
            start = delivered - min(back, delivered)
            end = min(len(records), delivered + ahead)
            batches.append([*records[start:end], *records[: min(trail, delivered)]])
            delivered = max(delivered, end)
        batches.append(records[delivered:])
        once, mixed = await self.create_read_model(), await self.create_read_model()
        try:
            await once.apply_many(records)
            for batch in batches:
                await mixed.apply_many(batch)
            assert await mixed.snapshot() == await once.snapshot()
        finally:
            await self.dispose(once)
            await self.dispose(mixed)

    async def test_wipe(self, read_model: ReadModel) -> None:
        h = History()
        h.running("a")
        await read_model.apply_many(h.records)
        await read_model.append_logs("a", [LogLine(seq=1, text="x")])
        await read_model.put_runner_snapshot("runner-a", b'{"gpus":[]}', T0)
        view = QueueView(entries=(QueueEntry(job_id="b", position=1, priority=5),))
        await read_model.set_queue_view(view)

        await read_model.wipe(keep_feeds=True)
        assert await read_model.applied_position() == 0
        assert await read_model.get_job("a") is None
        assert await read_model.job_events("a") == []
        assert len(await read_model.logs("a")) == 1
        assert len(await read_model.runner_snapshots()) == 1
        assert await read_model.queue_view() == view

        await read_model.wipe()
        assert await read_model.logs("a") == []
        assert await read_model.runner_snapshots() == []
        assert await read_model.queue_view() == QueueView()
        empty = await read_model.snapshot()
        assert (empty.applied_position, empty.jobs, empty.folds, empty.indexes) == (0, {}, {}, {})
        # And it projects again from scratch.
        assert await read_model.apply_many(h.records) == len(h.records)

    # --- runner- and scheduler-fed views --------------------------------------------------

    async def test_runner_snapshots(self, read_model: ReadModel) -> None:
        later = T0 + timedelta(seconds=30)
        assert await read_model.put_runner_snapshot("runner-b", b'{"gpus":[1]}', T0)
        assert await read_model.put_runner_snapshot("runner-a", b'{"gpus":[0]}', later)
        assert not await read_model.put_runner_snapshot("runner-a", b'{"stale":1}', T0)
        assert await read_model.put_runner_snapshot("runner-a", b'{"gpus":[2]}', later)
        snapshots = await read_model.runner_snapshots()
        assert [(s.runner_id, s.seen_at, s.data) for s in snapshots] == [
            ("runner-a", later, b'{"gpus":[2]}'),
            ("runner-b", T0, b'{"gpus":[1]}'),
        ]
        await read_model.remove_runner("runner-b")
        await read_model.remove_runner("never-seen")
        assert [s.runner_id for s in await read_model.runner_snapshots()] == ["runner-a"]
        with pytest.raises(ValueError, match="timezone"):
            await read_model.put_runner_snapshot("runner-c", b"{}", T0.replace(tzinfo=None))

    async def test_queue_view(self, read_model: ReadModel) -> None:
        assert await read_model.queue_view() == QueueView()
        view = QueueView(
            entries=(
                QueueEntry(job_id="a", position=1, priority=9, estimated_start=T0),
                QueueEntry(job_id="b", position=2, priority=5),
            ),
            computed_at=T0,
            as_of_position=42,
        )
        await read_model.set_queue_view(view)
        stored = await read_model.queue_view()
        assert stored == view
        assert stored.entry("b") == view.entries[1]
        assert stored.entry("zz") is None
