"""Sampled request inputs and predictions, written to rotating JSON Lines files for drift monitoring.

``PayloadLogger.submit`` runs on the event loop and never blocks: it samples, then puts the
record on a bounded queue (a full queue drops it and counts the drop). A daemon thread serialises
records with orjson and appends them to the current file (``payload_files.LogFiles``), which
rotates, compresses and keeps the directory under its size cap. ``close()`` drains the queue and
finishes the current file, so a graceful stop (SIGTERM) loses nothing.

Accounting: a record counts as written once all its bytes reached the file (the kernel's page
cache; files are fsynced when finished), and every record that does not get there counts as
dropped, by reason (``queue_full``, ``closed``, ``too_large``, ``unserialisable``,
``write_error``). A write failure starts an episode: logged once with its cause, records dropped
(counted) while it lasts, a new file tried every ``RETRY_S`` seconds, and the figure logged when
writing works again. The record and file-name contract, and the reference reader, are
``core/payload_format.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core import payload_format
from mlflow_deploy_plugins.serving.metrics import PAYLOAD_DROP_REASONS, ServingMetrics
from mlflow_deploy_plugins.serving.payload_files import LogFiles, Removed, check_writable

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_MAX_DRAIN = 1000  # records written in one write under sustained load
_STOP = object()
#: After a write error, records are dropped (counted) for this long before a new file is tried:
#: a full disk would otherwise cost an open, a failed write and an unlink per record.
RETRY_S = 1.0

QUEUE_FULL, CLOSED, TOO_LARGE, UNSERIALISABLE, WRITE_ERROR = PAYLOAD_DROP_REASONS


class PayloadLogger:
    """Writes a sample of requests (inputs and outputs) to rotating JSON Lines files.

    Args:
        directory: where the files go; created if missing. It must be writable: checked here.
        model_name: served model name, stored in every record.
        model_version: served model version, stored in every record.
        sample_rate: fraction of requests logged (0 to 1), decided per request.
        max_file_bytes: a file is finished once it holds this many bytes.
        max_age_s: a file is finished once it has been open this long.
        gzip: compress files when they are finished.
        queue_size: records waiting for the writer; when full, new records are dropped.
        metrics: counts written, dropped and removed records; a private one when ``None``.
        max_total_bytes: the oldest finished files are removed to keep the directory under this
            many bytes; ``None``: no cap.
        max_record_bytes: a record larger than this (as JSON) is dropped, counted ``too_large``.
        seed: seeds the sampling RNG (tests).
        autostart: start the writer thread now; else on :meth:`start` or :meth:`close`.
            Start it after forking worker processes: threads do not survive a fork.
        require_writable: refuse a directory that cannot be written now; False when the
            server waits for it unready (``payload_log_unwritable=unready``).

    Raises:
        PayloadLogDirectoryError: the directory cannot be created or written (and
            ``require_writable``).
        ValueError: an argument out of range.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model_name: str,
        model_version: str,
        sample_rate: float = 1.0,
        max_file_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 3600.0,
        gzip: bool = False,
        queue_size: int = 10_000,
        metrics: ServingMetrics | None = None,
        *,
        max_total_bytes: int | None = None,
        max_record_bytes: int | None = None,
        seed: int | None = None,
        autostart: bool = True,
        require_writable: bool = True,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
        sizes = (max_file_bytes, max_total_bytes or 1, max_record_bytes or 1, queue_size)
        if min(sizes) < 1 or not max_age_s > 0:
            raise ValueError(
                "max_file_bytes, max_total_bytes, max_record_bytes, max_age_s and queue_size "
                f"must be positive, got {max_file_bytes!r}, {max_total_bytes!r}, "
                f"{max_record_bytes!r}, {max_age_s!r}, {queue_size!r}"
            )
        self.directory = Path(directory)
        if require_writable:
            check_writable(self.directory)
        self.model_name = model_name
        self.model_version = model_version
        self.sample_rate = sample_rate
        self.max_age_s = max_age_s
        self.max_record_bytes = max_record_bytes
        if max_total_bytes is not None:
            # A file may not outgrow the cap: it could never be kept whole.
            max_file_bytes = min(max_file_bytes, max(1, max_total_bytes // 2))
        self.files = LogFiles(self.directory, max_file_bytes, gzip, max_total_bytes)
        metrics = metrics if metrics is not None else ServingMetrics()
        self._written = metrics.payload_log_records_written_total
        dropped = metrics.payload_log_records_dropped_total
        self._dropped = {reason: dropped.labels(reason) for reason in PAYLOAD_DROP_REASONS}
        self._removed_files = metrics.payload_log_files_removed_total
        self._removed_bytes = metrics.payload_log_bytes_removed_total

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._put = self._queue.put_nowait
        self._random = random.Random(seed).random
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="payload-log-writer", daemon=True)
        # Writer-thread state: the current failure episode.
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._episode_dropped = 0
        self._last_error_log = -1e9
        if self.directory.is_dir():  # else nothing to remove yet (waiting for the directory)
            self._count_removed(self.files.enforce_cap())
        if autostart:
            self.start()

    @classmethod
    def from_settings(
        cls,
        settings: ServingSettings,
        model_name: str,
        model_version: str,
        metrics: ServingMetrics | None = None,
        **kwargs: Any,
    ) -> PayloadLogger | None:
        """A logger configured by ``settings.payload_log_*``, or ``None`` when logging is off."""
        if settings.payload_log_dir is None:
            return None
        return cls(
            settings.payload_log_dir,
            model_name,
            model_version,
            sample_rate=settings.payload_log_sample_rate,
            max_file_bytes=settings.payload_log_file_max_bytes,
            max_age_s=settings.payload_log_max_age_s,
            gzip=settings.payload_log_gzip,
            queue_size=settings.payload_log_queue_size,
            metrics=metrics,
            max_total_bytes=settings.payload_log_max_bytes,
            max_record_bytes=settings.payload_log_max_record_bytes,
            require_writable=settings.payload_log_unwritable == "fail",
            **kwargs,
        )

    @property
    def written(self) -> int:
        """Records written so far (the metrics counter)."""
        return int(self._written.value)

    @property
    def dropped(self) -> int:
        """Records lost so far, whatever the reason."""
        return int(sum(child.value for child in self._dropped.values()))

    def dropped_by_reason(self) -> dict[str, int]:
        return {reason: int(child.value) for reason, child in self._dropped.items()}

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._start_lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def submit(
        self,
        request_id: str | None,
        columns: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> bool:
        """Queue one request for logging if it is sampled; never blocks.

        The arrays are not copied: do not modify them afterwards.

        Returns:
            True if the record was queued; False if not sampled, the queue is full (a counted
            drop) or the logger is closed (also a drop).
        """
        if self._closed:
            self._dropped[CLOSED].inc()
            return False
        if self.sample_rate < 1.0 and self._random() >= self.sample_rate:
            return False
        try:
            self._put((time.time(), request_id, columns, outputs))
        except queue.Full:
            self._dropped[QUEUE_FULL].inc()
            return False
        return True

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until every record queued before this call is written (or counted dropped).

        Blocks: not for the event loop. Returns False on timeout or if the writer is not running.
        """
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop accepting records, write every queued one and finish the current file.

        Call it on SIGTERM. Idempotent. Returns False if the writer did not finish in ``timeout``
        seconds (what it wrote so far stays readable in the ``.part`` file).
        """
        self._closed = True
        self.start()  # a never-started logger still drains what was queued
        with contextlib.suppress(queue.Full):  # when full, the writer is busy anyway
            self._queue.put_nowait(_STOP)  # wakes the writer
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> PayloadLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        try:
            while True:
                try:
                    item = q.get(timeout=self._wait_s())
                except queue.Empty:
                    item = None
                lines: list[bytes] = []
                times: list[float] = []
                flushed: list[threading.Event] = []
                drained = 0
                while item is not None:
                    if isinstance(item, tuple):
                        line = self._serialise(item)
                        if line is not None:
                            lines.append(line)
                            times.append(item[0])
                    elif isinstance(item, threading.Event):
                        flushed.append(item)
                    drained += 1
                    if drained >= _MAX_DRAIN:
                        break
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        item = None
                if lines:
                    self._append(lines, times)
                for event in flushed:
                    event.set()
                if self.files.is_open and self.files.age() >= self.max_age_s:
                    self._count_removed(self.files.finish())
                if self._closed and q.empty():
                    break
        except Exception:
            _logger.exception("Payload log writer failed; further records are dropped")
        finally:
            self._count_removed(self.files.finish())
            if self._failing_since is not None:
                _logger.error(
                    "Payload log: stopped while writing to %s failed; %d record(s) dropped in "
                    "the last %.1f s",
                    self.directory,
                    self._episode_dropped,
                    time.monotonic() - self._failing_since,
                )

    def _wait_s(self) -> float:
        if not self.files.is_open:
            return 1.0
        return min(1.0, max(0.01, self.max_age_s - self.files.age()))

    def _serialise(self, item: tuple[float, str | None, Mapping[str, Any], Mapping[str, Any]]):
        ts, request_id, columns, outputs = item
        try:
            line = orjson.dumps(
                payload_format.record(
                    ts,
                    request_id,
                    self.model_name,
                    self.model_version,
                    _n_rows(columns, outputs),
                    columns,
                    outputs,
                ),
                default=_to_json,
                option=_DUMPS_OPTIONS,
            )
        except (TypeError, orjson.JSONEncodeError) as e:
            self._drop(1, UNSERIALISABLE)
            self._log_rarely("Payload log record %s could not be serialised: %s", request_id, e)
            return None
        if self.max_record_bytes is not None and len(line) > self.max_record_bytes:
            self._drop(1, TOO_LARGE)
            self._log_rarely(
                "Payload log record %s is %d bytes, over the %d-byte limit "
                "(payload_log_max_record_bytes): dropped",
                request_id,
                len(line),
                self.max_record_bytes,
            )
            return None
        return line

    def _append(self, lines: list[bytes], times: list[float]) -> None:
        now = time.monotonic()
        if self._failing_since is not None and now < self._retry_at:
            self._drop(len(lines), WRITE_ERROR)
            return
        result = self.files.append(lines, times)
        self._count_removed(self.files.removed)
        self.files.removed = Removed()
        if result.written:
            self._written.inc(result.written)
        if result.error is None:
            if self._failing_since is not None:
                _logger.warning(
                    "Payload log: writing to %s again after %.1f s; %d record(s) dropped meanwhile",
                    self.directory,
                    now - self._failing_since,
                    self._episode_dropped,
                )
                self._failing_since = None
            return
        if self._failing_since is None:
            self._failing_since = now
            self._episode_dropped = 0
            _logger.error(
                "Payload log: cannot write to %s (%s); dropping records (counted in "
                "payload_log_records_dropped_total) and trying again every %.0f s",
                self.directory,
                result.error,
                RETRY_S,
            )
        self._retry_at = now + RETRY_S
        self._drop(len(lines) - result.written, WRITE_ERROR)

    def _drop(self, n: int, reason: str) -> None:
        self._dropped[reason].inc(n)
        if self._failing_since is not None:
            self._episode_dropped += n

    def _count_removed(self, removed: Removed) -> None:
        if removed.files:
            self._removed_files.inc(removed.files)
            self._removed_bytes.inc(removed.bytes)

    def _log_rarely(self, message: str, *args: Any) -> None:
        # The same bad record may arrive thousands of times a minute: say so once a minute.
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:
            self._last_error_log = now
            _logger.error(message, *args)


def _n_rows(columns: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    for arrays in (columns, outputs):
        for array in arrays.values():
            return len(array) if np.ndim(array) else 1
    return 0


def _to_json(obj: Any) -> Any:
    # orjson serialises C-contiguous numeric arrays itself and calls this for everything else.
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf" and not obj.flags.c_contiguous:
            return np.ascontiguousarray(obj)
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
