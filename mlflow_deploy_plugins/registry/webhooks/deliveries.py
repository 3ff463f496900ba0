"""What the webhook receiver remembers: delivery ids inside the replay window (kept in a small
file across restarts) and the rejected deliveries it reports, at most once a minute."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mlflow_deploy_plugins.errors import InvalidInputError

# the receiver's logger: its rejection reports read (and filter) as the receiver's lines
_logger = logging.getLogger("mlflow_deploy_plugins.registry.webhooks.receiver")

#: Deliveries signed longer ago (or further ahead) than this are refused as replays.
REPLAY_WINDOW_S = 300
#: Rejected (unsigned, stale, forged) deliveries are logged at most this often, with their count.
REJECTION_LOG_INTERVAL_S = 60.0


class DeliveryLog:
    """Delivery ids seen within the replay window (older ones are refused as stale anyway).

    With ``path``, every id is appended to that file with its expiry (Unix time) and the live
    ones are read back at start, so a restarted receiver still refuses a replay inside the
    window. The file is rewritten with the live ids only when it holds mostly expired ones.

    Args:
        ttl_s: how long an id is remembered.
        max_entries: the oldest ids are forgotten first beyond this many.
        path: the file that keeps them across restarts (None: memory only).
        clock: returns the current Unix time (tests move it).
    """

    def __init__(
        self,
        ttl_s: float = 2 * REPLAY_WINDOW_S,
        max_entries: int = 100_000,
        path: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._ttl, self._max = ttl_s, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock
        self._path = None if path is None else Path(path)
        self._lines = 0
        if self._path is not None:
            self._load()

    def first_time(self, delivery_id: str) -> bool:
        """True the first time ``delivery_id`` is seen within its time to live."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now + self._ttl
            self._persist(delivery_id, now + self._ttl)
            return True

    def _expire(self, now: float) -> None:
        while self._seen and (
            next(iter(self._seen.values())) < now or len(self._seen) >= self._max
        ):
            self._seen.popitem(last=False)

    def _load(self) -> None:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as e:
            raise InvalidInputError(f"Cannot read the delivery log {self._path}: {e}") from e
        now = self._clock()
        for line in text.splitlines():
            delivery_id, _, expiry = line.rpartition(" ")
            try:
                if delivery_id and float(expiry) >= now:
                    self._seen[delivery_id] = float(expiry)
            except ValueError:  # a line cut short by a crash: skip it
                continue
        self._lines = len(text.splitlines())
        _logger.info("Delivery log %s: %d id(s) inside the window", self._path, len(self._seen))

    def _persist(self, delivery_id: str, expiry: float) -> None:
        if self._path is None:
            return
        try:
            if self._lines > 1000 and self._lines > 2 * len(self._seen):
                self._rewrite()
            else:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(f"{_one_line(delivery_id)} {expiry:.0f}\n")
                self._lines += 1
        except OSError as e:  # keep receiving: the id is still remembered in memory
            _logger.error("Could not write the delivery log %s: %s", self._path, e)

    def _rewrite(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{_one_line(i)} {e:.0f}\n" for i, e in self._seen.items())
        os.replace(tmp, self._path)
        self._lines = len(self._seen)


def _one_line(delivery_id: str) -> str:
    return delivery_id.replace("\n", " ").replace("\r", " ")


class RejectionLog:
    """Counts rejected deliveries; one WARNING at most every ``interval_s`` with the count.

    A flood of unsigned requests would otherwise write one line each (662/s measured).
    """

    def __init__(
        self,
        interval_s: float = REJECTION_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._last: float | None = None

    def rejected(self, reason: str) -> None:
        now = self._clock()
        with self._lock:
            self._pending += 1
            if self._last is not None and now - self._last < self.interval_s:
                return
            count, self._pending, self._last = self._pending, 0, now
        _logger.warning(
            "Rejected %d webhook deliver%s since the last report (at most one report every "
            "%.0f s); the latest: %s",
            count,
            "y" if count == 1 else "ies",
            self.interval_s,
            reason,
        )
