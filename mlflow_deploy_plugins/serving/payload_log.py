"""Sampled request inputs and predictions, written to rotating JSON Lines files for drift monitoring.

``PayloadLogger.submit`` runs on the event loop and never blocks: it samples, then puts the
record on a bounded queue (a full queue drops it and counts the drop). A daemon thread serialises
records with orjson, writes, flushes and rotates. ``close()`` drains the queue and finishes the
current file, so a graceful stop (SIGTERM) loses nothing.

The record and file-name contract, and the reference reader, are ``core/payload_format.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core import payload_format
from mlflow_deploy_plugins.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_WRITE_BUFFER = 1 << 16
_MAX_DRAIN = 1000  # records written between two flushes under sustained load
_STOP = object()


class PayloadLogger:
    """Writes a sample of requests (inputs and outputs) to rotating JSON Lines files.

    Args:
        directory: where the files go; created if missing.
        model_name: served model name, stored in every record.
        model_version: served model version, stored in every record.
        sample_rate: fraction of requests logged (0 to 1), decided per request.
        max_bytes: a file is finished once it holds this many bytes.
        max_age_s: a file is finished once it has been open this long.
        gzip: compress files when they are finished.
        queue_size: records waiting for the writer; when full, new records are dropped.
        metrics: counts written and dropped records; a private one when ``None``.
        seed: seeds the sampling RNG (tests).
        autostart: start the writer thread now; else on :meth:`start` or :meth:`close`.
            Start it after forking worker processes: threads do not survive a fork.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model_name: str,
        model_version: str,
        sample_rate: float = 1.0,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 3600.0,
        gzip: bool = False,
        queue_size: int = 10_000,
        metrics: ServingMetrics | None = None,
        *,
        seed: int | None = None,
        autostart: bool = True,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
        if max_bytes < 1 or not max_age_s > 0 or queue_size < 1:
            raise ValueError(
                f"max_bytes, max_age_s and queue_size must be positive, got "
                f"{max_bytes!r}, {max_age_s!r}, {queue_size!r}"
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.model_version = model_version
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.gzip = gzip
        metrics = metrics if metrics is not None else ServingMetrics()
        self._written = metrics.payload_log_records_written_total
        self._dropped = metrics.payload_log_records_dropped_total

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._put = self._queue.put_nowait
        self._random = random.Random(seed).random
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="payload-log-writer", daemon=True)

        # Writer-thread state: the file being written.
        self._file: IO[bytes] | None = None
        self._key = ""
        self._part: Path | None = None
        self._opened_at = 0.0
        self._last_ts = 0.0
        self._bytes = 0
        self._records = 0
        self._seq = 0
        self._last_error_log = -1e9
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
            max_bytes=settings.payload_log_max_bytes,
            max_age_s=settings.payload_log_max_age_s,
            gzip=settings.payload_log_gzip,
            queue_size=settings.payload_log_queue_size,
            metrics=metrics,
            **kwargs,
        )

    @property
    def written(self) -> int:
        """Records written so far (the metrics counter)."""
        return int(self._written.value)

    @property
    def dropped(self) -> int:
        """Records lost so far: queue full, after close, or a write error."""
        return int(self._dropped.value)

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
            self._dropped.inc()
            return False
        if self.sample_rate < 1.0 and self._random() >= self.sample_rate:
            return False
        try:
            self._put((time.time(), request_id, columns, outputs))
        except queue.Full:
            self._dropped.inc()
            return False
        return True

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until every record queued before this call is written and flushed.

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
                flushed: list[threading.Event] = []
                written = drained = 0
                while item is not None:
                    if isinstance(item, tuple):
                        written += self._write(item)
                    elif isinstance(item, threading.Event):
                        flushed.append(item)
                    drained += 1
                    if drained >= _MAX_DRAIN:
                        break
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        item = None
                self._flush_file()
                if written:
                    self._written.inc(written)
                for event in flushed:
                    event.set()
                if self._file is not None and self._age() >= self.max_age_s:
                    self._finish_file()
                if self._closed and q.empty():
                    break
        except Exception:
            _logger.exception("Payload log writer failed; further records are dropped")
        finally:
            self._finish_file()

    def _wait_s(self) -> float:
        if self._file is None:
            return 1.0
        return min(1.0, max(0.01, self.max_age_s - self._age()))

    def _age(self) -> float:
        return time.monotonic() - self._opened_at

    def _write(self, item: tuple[float, str | None, Mapping[str, Any], Mapping[str, Any]]) -> int:
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
            self._dropped.inc()
            self._log_error("Payload log record %s could not be serialised: %s", request_id, e)
            return 0
        try:
            if self._file is None:
                self._open(ts)
            assert self._file is not None
            self._file.write(line)
        except OSError as e:
            self._dropped.inc()
            self._log_error("Payload log record %s could not be written: %s", request_id, e)
            self._finish_file()
            return 0
        self._bytes += len(line)
        self._records += 1
        self._last_ts = max(self._last_ts, ts)
        if self._bytes >= self.max_bytes:
            self._finish_file()
        return 1

    def _open(self, ts: float) -> None:
        pid = os.getpid()
        while True:
            self._seq += 1
            key = payload_format.identity(ts, pid, self._seq)
            # A restarted process can reuse a pid (pid 1 in containers): never reuse an identity.
            if any(self.directory.glob(f"{key}-*")):
                continue
            part = self.directory / payload_format.part_name(key)
            try:
                self._file = open(part, "xb", buffering=_WRITE_BUFFER)  # noqa: SIM115
            except FileExistsError:
                continue
            break
        self._key, self._part = key, part
        self._opened_at = time.monotonic()
        self._last_ts = ts
        self._bytes = self._records = 0

    def _flush_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as e:
            self._log_error("Payload log file %s could not be flushed: %s", self._part, e)
            self._finish_file()

    def _finish_file(self) -> None:
        f, part = self._file, self._part
        if f is None or part is None:
            return
        self._file = None
        try:
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()
            if self._records == 0:
                part.unlink()
                return
            final = self.directory / payload_format.finished_name(
                self._key, self._last_ts, self.gzip
            )
            if self.gzip:
                _gzip_atomically(part, final)
                part.unlink()
            else:
                os.replace(part, final)
        except OSError as e:
            self._log_error("Payload log file %s could not be finished: %s", part, e)

    def _log_error(self, message: str, *args: Any) -> None:
        # A full disk fails every record: say so once a minute, not thousands of times.
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:
            self._last_error_log = now
            _logger.error(message, *args)


def _gzip_atomically(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as raw:
            # Level 1: the writer thread must keep up with serving while it compresses.
            with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
