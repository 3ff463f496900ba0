"""A per-key ordered scheduler: items of one key run one at a time in arrival order, keys run
in parallel, and an item joins a pending (not started) item that stands for the same work."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T]):
    item: T
    future: Future = field(default_factory=Future)


class OrderedScheduler(Generic[T, R]):
    """Runs ``work(item)`` on a thread pool, serialised per ``key(item)``.

    Args:
        work: does one item; its return value resolves the item's Future (an exception fails it).
        key: items with the same key run one after another, in the order they were submitted.
        same: pending items with the same ``same(item)`` are merged instead of queued twice.
        merge: ``merge(pending, newer)`` is the item that runs for both.
        workers: keys processed at the same time.
        thread_name_prefix: names the worker threads (in logs and thread dumps).
    """

    def __init__(
        self,
        work: Callable[[T], R],
        *,
        key: Callable[[T], Hashable],
        same: Callable[[T], Hashable],
        merge: Callable[[T, T], T],
        workers: int = 4,
        thread_name_prefix: str = "ordered-scheduler",
    ):
        self._work, self._key, self._same, self._merge = work, key, same, merge
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Condition()
        self._queues: dict[Hashable, deque[_Job[T]]] = {}
        self._running: set[Hashable] = set()

    def submit(self, item: T) -> Future:
        """Queue ``item``; returns the Future of ``work(item)``. Never blocks on work.

        An item that stands for the same work as a pending one joins it (same Future).
        """
        key, same = self._key(item), self._same(item)
        with self._lock:
            queue = self._queues.setdefault(key, deque())
            for job in queue:
                if self._same(job.item) == same:
                    job.item = self._merge(job.item, item)
                    return job.future
            job = _Job(item)
            queue.append(job)
            if key not in self._running:
                self._running.add(key)
                self._executor.submit(self._drain, key)
            return job.future

    def pending(self) -> int:
        """Items queued plus keys being worked on."""
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + len(self._running)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued item is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queues or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, wait: bool = True) -> None:
        """Release the workers; ``wait=False`` cancels the items that have not started."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _drain(self, key: Hashable) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(key)
                if not queue:
                    self._queues.pop(key, None)
                    self._running.discard(key)
                    self._lock.notify_all()
                    return
                job = queue.popleft()
            try:
                result = self._work(job.item)
            except Exception as e:  # the caller's Future carries it; the next item still runs
                _logger.debug("Scheduled work for %r raised %s", key, e)
                job.future.set_exception(e)
            else:
                job.future.set_result(result)
