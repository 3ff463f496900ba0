"""The payload log's files on disk: whole lines appended, rotation, gzip, and the size cap.

Used by the writer thread of ``payload_log.PayloadLogger`` only. Writes go straight to the file
descriptor (no user-space buffer), so a record is counted written only once the kernel took all
of its bytes; a failed write is cut back to the last whole line, so no partial record stays in a
file. Names follow ``core/payload_format.py``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow_deploy_plugins.core import payload_format

_logger = logging.getLogger(__name__)

_PROBE = ".payload-log-write-probe"


class PayloadLogDirectoryError(OSError):
    """The payload log directory cannot be created or written."""


@dataclass
class WriteResult:
    """What one :meth:`LogFiles.append` did: records on disk, and the error that stopped it."""

    written: int
    error: OSError | None = None


@dataclass
class Removed:
    """Finished files removed to keep the directory under its size cap."""

    files: int = 0
    bytes: int = 0

    def add(self, other: Removed) -> None:
        self.files += other.files
        self.bytes += other.bytes


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be created in it.

    A full disk is not refused: it is a passing condition (the writer counts the drops and
    writes again once there is space), and a worker restarted while the disk is full must
    serve, not stop the server.

    Raises:
        PayloadLogDirectoryError: naming the directory and the operating system's reason.
    """
    probe = directory / f"{_PROBE}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        probe.unlink()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _logger.warning(
                "Payload log directory %s is full: records are dropped until it is not", directory
            )
            return
        raise PayloadLogDirectoryError(
            e.errno, f"payload log directory {str(directory)!r} is not writable: {e.strerror}"
        ) from e


class LogFiles:
    """The file being written in one directory, and what happens when it is finished.

    Args:
        directory: where the files go (must exist).
        max_file_bytes: a file is finished once it holds this many bytes.
        gzip: compress files when they are finished.
        max_total_bytes: after each finished file, the oldest finished files are removed until
            the directory holds at most this many bytes of payload log; ``None``: no cap.
    """

    def __init__(
        self,
        directory: Path,
        max_file_bytes: int,
        gzip: bool = False,
        max_total_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.gzip = gzip
        self.max_total_bytes = max_total_bytes
        self._fd: int | None = None
        self._key = ""
        self._part: Path | None = None
        self._opened_at = 0.0
        self._last_ts = 0.0
        self._bytes = 0
        self._records = 0
        self._seq = 0
        #: What rotations inside :meth:`append` removed (the caller takes and resets it).
        self.removed = Removed()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def age(self) -> float:
        """Seconds since the current file was opened (0 when none is)."""
        return time.monotonic() - self._opened_at if self._fd is not None else 0.0

    def append(self, lines: list[bytes], times: list[float]) -> WriteResult:
        """Append whole ``lines`` (each ending in a newline; ``times`` their records' Unix times)
        to the current file, opening one, and rotate when a file reaches ``max_file_bytes``.

        On an error, the lines that reached the file whole stay, the rest are cut off, and the
        file is finished; the caller counts the others as dropped.
        """
        written = 0
        start = 0
        while start < len(lines):
            # Fill the current file up to its size limit, at least one line per file.
            room = self.max_file_bytes - (self._bytes if self._fd is not None else 0)
            end, size = start + 1, len(lines[start])
            while end < len(lines) and size + len(lines[end]) <= room:
                size += len(lines[end])
                end += 1
            result = self._append_to_file(lines[start:end], times[start], max(times[start:end]))
            written += result.written
            if result.error is not None:
                return WriteResult(written, result.error)
            start = end
        return WriteResult(written)

    def _append_to_file(self, lines: list[bytes], first_ts: float, last_ts: float) -> WriteResult:
        try:
            if self._fd is None:
                self._open(first_ts)
        except OSError as e:
            return WriteResult(0, e)
        assert self._fd is not None
        data = b"".join(lines)
        done, error = _write_all(self._fd, data)
        if error is None:
            self._bytes += len(data)
            self._records += len(lines)
            self._last_ts = max(self._last_ts, last_ts)
            if self._bytes >= self.max_file_bytes:
                self.removed.add(self.finish())
            return WriteResult(len(lines))
        whole = kept = 0
        for line in lines:
            if kept + len(line) > done:
                break
            kept += len(line)
            whole += 1
        with contextlib.suppress(OSError):  # then the partial line is the file's last: skipped
            os.ftruncate(self._fd, self._bytes + kept)
        self._bytes += kept
        self._records += whole
        if whole:
            self._last_ts = max(self._last_ts, last_ts)
        self.removed.add(self.finish())
        return WriteResult(whole, error)

    def finish(self) -> Removed:
        """Fsync, close and rename the current file (gzip it if asked); drop it when empty.

        Then enforce the size cap. Errors are logged: what was written stays readable.
        """
        fd, part = self._fd, self._part
        if fd is None or part is None:
            return Removed()
        self._fd = None
        try:
            os.fsync(fd)
        except OSError as e:
            _logger.error("Payload log file %s could not be synced: %s", part, e)
        finally:
            os.close(fd)
        try:
            if self._records == 0:
                part.unlink(missing_ok=True)
                return Removed()
            final = self.directory / payload_format.finished_name(
                self._key, self._last_ts, self.gzip
            )
            if self.gzip:
                _gzip_atomically(part, final)
                part.unlink()
            else:
                os.replace(part, final)
        except OSError as e:
            # The .part stays: a reader reads it like a finished file.
            _logger.error("Payload log file %s could not be finished: %s", part, e)
        return self.enforce_cap()

    def enforce_cap(self) -> Removed:
        """Remove the oldest finished files until the directory is under ``max_total_bytes``.

        Files in progress (any writer's ``.part``) are never removed. Several workers sharing
        the directory may race on a file: whoever removes it counts it.
        """
        removed = Removed()
        if self.max_total_bytes is None:
            return removed
        sized = []
        for log_file in payload_format.list_files(self.directory):
            try:
                sized.append((log_file, log_file.path.stat().st_size))
            except FileNotFoundError:
                continue
        total = sum(size for _, size in sized)
        for log_file, size in sized:
            if total <= self.max_total_bytes:
                break
            if not log_file.finished:
                continue
            try:
                log_file.path.unlink()
            except FileNotFoundError:
                total -= size  # another worker removed it
                continue
            except OSError as e:
                _logger.error("Payload log file %s could not be removed: %s", log_file.path, e)
                continue
            total -= size
            removed.files += 1
            removed.bytes += size
        if removed.files:
            _logger.info(
                "Payload log: removed the %d oldest file(s) (%d bytes) to stay under %d bytes",
                removed.files,
                removed.bytes,
                self.max_total_bytes,
            )
        return removed

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
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            break
        self._fd, self._key, self._part = fd, key, part
        self._opened_at = time.monotonic()
        self._last_ts = ts
        self._bytes = self._records = 0


def _write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write ``data`` to ``fd``; return the bytes written and the error that stopped it."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        try:
            n = os.write(fd, view[done:])
        except InterruptedError:
            continue
        except OSError as e:
            return done, e
        if n == 0:
            return done, OSError(f"write returned 0 after {done} of {len(data)} bytes")
        done += n
    return done, None


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
