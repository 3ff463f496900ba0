"""Adaptive batching without a fixed wait.

Each parsed request is queued; the first one schedules ONE flush for the next event-loop
iteration (``call_soon``), which runs one onnxruntime call for everything that arrived meanwhile
(capped at ``max_batch_size`` rows) and hands each request its own rows. A lone request is
answered at once; under load, batches grow by themselves. ``max_batch_time_ms > 0`` trades
latency for larger batches by flushing after that delay instead.

Requests of at least ``offload_rows`` rows run on ``executor`` (a small thread pool the server
owns; onnxruntime releases the GIL) instead of on the loop, so one huge request does not stall
the others; small requests never leave the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from mlflow_deploy_plugins.serving.results import answering_together

_logger = logging.getLogger(__name__)

#: callback(outputs, error): outputs is a list of arrays (this request's rows) or None.
Callback = Callable[[list | None, BaseException | None], None]


class Batcher:
    def __init__(
        self,
        run: Callable[[dict], list],
        max_batch_size: int = 64,
        max_batch_time_ms: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
        on_batch: Callable[[int], None] | None = None,
        offload_rows: int = 4096,
    ):
        self._run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self._delay = max(0.0, float(max_batch_time_ms)) / 1000.0
        #: The loop flushes are scheduled on; None: the running loop, looked up per call (which
        #: costs a getpid system call in CPython 3.11's get_running_loop).
        self.loop = loop
        self._pending: list[tuple[dict, int, Callback]] = []
        self._rows = 0
        self._scheduled = False
        self._on_batch = on_batch
        self.offload_rows = max(1, int(offload_rows))
        #: Where requests of ``offload_rows`` rows or more run; None: on the loop.
        self.executor: Executor | None = None

    def submit(self, feed: dict, n_rows: int, callback: Callback) -> None:
        """Queue ``feed`` (``n_rows`` rows); ``callback`` gets this request's outputs."""
        if n_rows >= self.max_batch_size:
            if n_rows >= self.offload_rows and self.executor is not None:
                self._offload(feed, n_rows, callback)
            else:
                self._run_group([(feed, n_rows, callback)])
            return
        self._pending.append((feed, n_rows, callback))
        self._rows += n_rows
        if self._rows >= self.max_batch_size:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop = self.loop or asyncio.get_running_loop()
            if self._delay:
                loop.call_later(self._delay, self.flush)
            else:
                loop.call_soon(self.flush)

    def _offload(self, feed: dict, n_rows: int, callback: Callback) -> None:
        if self._on_batch is not None:
            self._on_batch(n_rows)
        loop = self.loop or asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self._run, feed)

        def done(f: asyncio.Future) -> None:
            if f.cancelled():
                callback(None, asyncio.CancelledError())
                return
            error = f.exception()
            try:
                callback(None if error else f.result(), error)
            except Exception:
                _logger.exception("Batch callback failed")

        future.add_done_callback(done)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return
        # Requests merge only when their feeds have the same inputs, dtypes and trailing dims.
        groups: dict[tuple, list] = {}
        for item in pending:
            groups.setdefault(_signature(item[0]), []).append(item)
        with answering_together():  # a connection's answers in this flush: one write
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list) -> None:
        if self._on_batch is not None:
            self._on_batch(sum(n for _, n, _ in group))
        if len(group) == 1:
            feed, _, callback = group[0]
            _call(self._run, feed, callback)
            return
        names = list(group[0][0])
        merged = {name: np.concatenate([item[0][name] for item in group]) for name in names}
        try:
            outputs = self._run(merged)
        except Exception:
            # One bad request must not fail its neighbours: retry each on its own.
            for feed, _, callback in group:
                _call(self._run, feed, callback)
            return
        start = 0
        for _, n_rows, callback in group:
            end = start + n_rows
            try:
                callback([out[start:end] for out in outputs], None)
            except Exception:  # a callback bug must not stop the others
                _logger.exception("Batch callback failed")
            start = end


def _signature(feed: dict) -> tuple:
    return tuple((k, v.dtype.str, v.shape[1:]) for k, v in feed.items())


def _call(run, feed, callback) -> None:
    try:
        outputs = run(feed)
    except Exception as e:
        callback(None, e)
        return
    try:
        callback(outputs, None)
    except Exception:
        _logger.exception("Batch callback failed")
