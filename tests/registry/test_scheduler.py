"""The per-key ordered scheduler, without a registry: order per key, parallel keys, merging."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import pytest

from mlflow_deploy_plugins.registry.scheduler import OrderedScheduler


@dataclass(frozen=True)
class Item:
    key: str
    slot: str
    value: int
    ids: tuple[int, ...] = ()


def merge(pending: Item, newer: Item) -> Item:
    return replace(newer, ids=pending.ids + newer.ids)


class Recorder:
    """Work that records what ran, optionally held at a gate or meeting a barrier."""

    def __init__(self):
        self.ran: list[Item] = []
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.gate: threading.Event | None = None
        self.barrier: threading.Barrier | None = None

    def __call__(self, item: Item) -> int:
        self.started.set()
        if self.barrier is not None:
            self.barrier.wait()
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            self.ran.append(item)
        if item.value < 0:
            raise ValueError(f"negative {item.value}")
        return item.value * 10


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def scheduler(recorder):
    made = OrderedScheduler(
        recorder, key=lambda i: i.key, same=lambda i: i.slot, merge=merge, workers=4
    )
    yield made
    made.drain(10)
    made.close()


def test_one_key_runs_in_submission_order_one_at_a_time(scheduler, recorder):
    recorder.gate = threading.Event()
    futures = [scheduler.submit(Item("a", f"s{i}", i)) for i in range(5)]
    assert recorder.started.wait(10)
    assert scheduler.pending() == 5  # four queued + one key running
    recorder.gate.set()
    assert [f.result(10) for f in futures] == [0, 10, 20, 30, 40]
    assert [i.value for i in recorder.ran] == [0, 1, 2, 3, 4]


def test_different_keys_run_at_the_same_time(scheduler, recorder):
    recorder.barrier = threading.Barrier(2, timeout=10)  # breaks unless both run at once
    a = scheduler.submit(Item("a", "s", 1))
    b = scheduler.submit(Item("b", "s", 2))
    assert (a.result(10), b.result(10)) == (10, 20)


def test_a_pending_item_for_the_same_work_is_merged_not_queued(scheduler, recorder):
    recorder.gate = threading.Event()
    running = scheduler.submit(Item("a", "s", 1, (1,)))
    assert recorder.started.wait(10)
    pending = scheduler.submit(Item("a", "s", 2, (2,)))
    joined = scheduler.submit(Item("a", "s", 3, (3,)))
    other = scheduler.submit(Item("a", "t", 4, (4,)))
    recorder.gate.set()

    assert joined is pending and other is not pending
    assert (running.result(10), pending.result(10), other.result(10)) == (10, 30, 40)
    assert [(i.value, i.ids) for i in recorder.ran] == [(1, (1,)), (3, (2, 3)), (4, (4,))]


def test_a_failing_item_fails_its_future_and_the_next_one_still_runs(scheduler, recorder):
    bad = scheduler.submit(Item("a", "s1", -1))
    good = scheduler.submit(Item("a", "s2", 5))
    with pytest.raises(ValueError, match="negative -1"):
        bad.result(10)
    assert good.result(10) == 50


def test_drain_waits_for_everything_and_times_out(scheduler, recorder):
    recorder.gate = threading.Event()
    scheduler.submit(Item("a", "s", 1))
    assert scheduler.drain(0.2) is False
    recorder.gate.set()
    assert scheduler.drain(10) is True
    assert scheduler.pending() == 0
