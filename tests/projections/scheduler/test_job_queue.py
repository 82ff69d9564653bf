"""The priority queue: order, FIFO within a priority, reordering, positions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swift_trainer.projections.scheduler import JobQueue, QueuedJob

from .builders import job


def ids(queue: JobQueue, limit: int | None = None) -> list[str]:
    return [queued.job_id for queued in queue.ordered(limit)]


def test_higher_priority_first_then_submission_order() -> None:
    queue = JobQueue()
    queue.add(job("low", priority=1, seq=1))
    queue.add(job("high-late", priority=9, seq=5))
    queue.add(job("high-early", priority=9, seq=2))
    queue.add(job("mid", priority=5, seq=3))
    assert ids(queue) == ["high-early", "high-late", "mid", "low"]


def test_fifo_follows_seq_not_insertion_order() -> None:
    queue = JobQueue()
    queue.add(job("second", seq=20))
    queue.add(job("first", seq=10))  # arrives late (a replay), but was queued first
    assert ids(queue) == ["first", "second"]


def test_fifo_holds_across_shapes() -> None:
    queue = JobQueue()
    queue.add(job("eight", seq=3, gpus=8))
    queue.add(job("one", seq=1))
    queue.add(job("named", seq=2, gpu_name="H100"))
    assert ids(queue) == ["one", "named", "eight"]


def test_priority_change_moves_the_job_but_keeps_its_seq() -> None:
    queue = JobQueue()
    queue.add(job("old", priority=9, seq=1))
    queue.add(job("raised", priority=1, seq=2))
    queue.add(job("young", priority=9, seq=3))
    assert queue.change_priority("raised", 9)
    assert ids(queue) == ["old", "raised", "young"]
    assert queue.change_priority("raised", 0)
    assert ids(queue) == ["old", "young", "raised"]
    changed = queue.get("raised")
    assert changed is not None
    assert (changed.priority, changed.seq) == (0, 2)


def test_unknown_jobs_are_reported_not_raised() -> None:
    queue = JobQueue()
    assert queue.remove("nope") is None
    assert not queue.change_priority("nope", 3)
    assert queue.position("nope") is None
    assert queue.get("nope") is None


def test_remove_and_positions() -> None:
    queue = JobQueue()
    for index, priority in enumerate([3, 7, 7, 1]):
        queue.add(job(f"j{index}", priority=priority, seq=index))
    assert [queue.position(f"j{i}") for i in range(4)] == [3, 1, 2, 4]
    removed = queue.remove("j1")
    assert removed is not None
    assert removed.job_id == "j1"
    assert "j1" not in queue
    assert [queue.position(f"j{i}") for i in (0, 2, 3)] == [2, 1, 3]
    assert len(queue) == 3


def test_adding_a_job_again_replaces_it() -> None:
    queue = JobQueue()
    queue.add(job("a", priority=1, seq=1, gpus=1))
    queue.add(job("a", priority=8, seq=1, gpus=2))
    assert len(queue) == 1
    replaced = queue.get("a")
    assert replaced is not None
    assert replaced.gpu_count == 2
    assert len(queue.lanes) == 1


def test_ordered_with_limit() -> None:
    queue = JobQueue()
    for index in range(10):
        queue.add(job(f"j{index}", seq=index, gpus=1 + index % 3))
    assert ids(queue, 4) == ["j0", "j1", "j2", "j3"]


jobs_strategy = st.lists(
    st.builds(
        QueuedJob,
        job_id=st.sampled_from([f"j{i}" for i in range(12)]),
        priority=st.integers(0, 10),
        seq=st.integers(0, 50),
        gpu_count=st.integers(1, 3),
        gpu_name=st.sampled_from([None, "h100"]),
    ),
    max_size=30,
)


@given(jobs_strategy, st.data())
def test_queue_order_matches_a_sorted_list(jobs: list[QueuedJob], data: st.DataObject) -> None:
    one_by_one, in_bulk = JobQueue(), JobQueue()
    model: dict[str, QueuedJob] = {}
    for queued in jobs:
        one_by_one.add(queued)
        model[queued.job_id] = queued
    in_bulk.extend(jobs)
    expected = sorted(model.values(), key=lambda q: (-q.priority, q.seq, q.job_id))
    assert list(one_by_one.ordered()) == expected
    assert list(in_bulk.ordered()) == expected
    for position, queued in enumerate(expected, start=1):
        assert one_by_one.position(queued.job_id) == position
    if expected:
        victim = data.draw(st.sampled_from(expected))
        one_by_one.remove(victim.job_id)
        assert list(one_by_one.ordered()) == [q for q in expected if q is not victim]
