"""The payload log's on-disk contract (records and file names) and its one reader.

Written by the serving runtime (``serving/payload_log.py``), read by drift monitoring
(``monitoring/payloads.py``) and by anyone with :func:`read_records`. Standard library only.

Record: one JSON object per line, one per request, keys in this order (readers may rely on
``ts`` and ``n_rows`` coming first, see :func:`record_header`)::

    {"schema_version": 1, "ts": "2026-11-27T17:30:00.123456Z", "request_id": "...",
     "model": "churn-onnx", "version": "3", "n_rows": 2,
     "inputs": {"age": [41.0, 37.5], "city": ["paris", "lyon"]}, "outputs": {"label": [1, 0]}}

``ts`` is UTC with microseconds and the same width on every record, so strings compare in time
order. NaN and infinities are written as ``null``; bytes as UTF-8 text.

Files:

* The file being written is ``payload-<start>-<pid>-<seq>.jsonl.part``: ``<start>`` is the UTC
  second of its first record (``YYYYMMDDTHHMMSSZ``), ``<pid>`` the writing process, ``<seq>`` six
  digits counted per process. ``payload-<start>-<pid>-<seq>`` is the file's identity. Lines are
  appended whole and flushed whenever the writer's queue runs empty; only the last line of a
  ``.part`` can be incomplete (no trailing newline), and readers skip it.
* Rotation (size or age reached, or the server stopping) flushes and fsyncs the file and
  atomically renames it to ``payload-<start>-<pid>-<seq>-<end>.jsonl``, ``<end>`` being the UTC
  second of its last record. With gzip, the compressed copy is written under a hidden temporary
  name, renamed to ``...-<end>.jsonl.gz``, and only then is the ``.part`` removed.
* A reader groups the names it lists by identity and reads the finished file when there is one,
  else the ``.part`` (if that vanished before opening, it was just finished: read the finished
  one). Each record is then read once per pass. Names sort by start time, and ``<start>``/``<end>``
  let a reader skip files outside a time window without opening them. A ``.part`` whose writer was
  killed (SIGKILL) stays a readable ``.part`` for good.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

SCHEMA_VERSION = 1

#: Names of payload log files, in progress (``part``) or finished (``end``, optional ``gz``).
FILE_NAME = re.compile(
    r"^(?P<key>payload-(?P<start>\d{8}T\d{6}Z)-(?P<pid>\d+)-(?P<seq>\d+))"
    r"(?:\.jsonl\.part|-(?P<end>\d{8}T\d{6}Z)\.jsonl(?P<gz>\.gz)?)$"
)
#: ``<start>`` and ``<end>`` in file names: UTC seconds.
NAME_TIME = "%Y%m%dT%H%M%SZ"
#: Record timestamps: fixed-width UTC with microseconds, so strings compare in time order.
RECORD_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_RECORD_TIME_WIDTH = len("2026-11-27T17:30:00.123456Z")


# --- writing: what the names and records look like ----------------------------------------------


def identity(start: float, pid: int, seq: int) -> str:
    """The identity ``payload-<start>-<pid>-<seq>`` of a file whose first record is at ``start``."""
    return f"payload-{_name_time(start)}-{pid}-{seq:06d}"


def part_name(key: str) -> str:
    """The name of the file ``key`` while it is being written."""
    return f"{key}.jsonl.part"


def finished_name(key: str, end: float, gzipped: bool = False) -> str:
    """The name of the file ``key`` once finished, its last record being at ``end``."""
    return f"{key}-{_name_time(end)}.jsonl" + (".gz" if gzipped else "")


def record_time(ts: float) -> str:
    """A record's ``ts`` for the Unix time ``ts``."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime(RECORD_TIME)


def record(
    ts: float,
    request_id: str | None,
    model: str,
    version: str,
    n_rows: int,
    inputs: Any,
    outputs: Any,
) -> dict[str, Any]:
    """One record, keys in the contract's order (``ts`` and ``n_rows`` early, for readers)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "ts": record_time(ts),
        "request_id": request_id,
        "model": model,
        "version": version,
        "n_rows": n_rows,
        "inputs": inputs,
        "outputs": outputs,
    }


def _name_time(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime(NAME_TIME)


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFile:
    """One payload log file as its name describes it."""

    path: Path
    key: str  # identity shared by the .part and the finished file
    start: datetime  # UTC second of the first record
    end: datetime | None  # UTC second of the last record; None while in progress
    pid: int
    seq: int
    gzip: bool

    @property
    def finished(self) -> bool:
        return self.end is not None

    def overlaps(self, since: datetime | None, until: datetime | None) -> bool:
        """Whether records in ``[since, until]`` can be in this file (from its name alone)."""
        if until is not None and self.start > until:
            return False
        return since is None or self.end is None or self.end + timedelta(seconds=1) > since


def list_files(directory: str | os.PathLike[str]) -> list[LogFile]:
    """Payload log files in ``directory``, one per identity (finished preferred), by start time."""
    directory = Path(directory)
    by_key: dict[str, LogFile] = {}
    for name in os.listdir(directory):
        m = FILE_NAME.match(name)
        if m is None:
            continue
        found = LogFile(
            path=directory / name,
            key=m["key"],
            start=_parse_name_time(m["start"]),
            end=_parse_name_time(m["end"]) if m["end"] else None,
            pid=int(m["pid"]),
            seq=int(m["seq"]),
            gzip=bool(m["gz"]),
        )
        known = by_key.get(found.key)
        if known is None or (found.finished and not known.finished):
            by_key[found.key] = found
    return sorted(by_key.values(), key=lambda f: (f.start, f.pid, f.seq))


def open_file(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a (possibly gzipped, by its ``.gz`` name) log file for reading bytes."""
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115


def complete_lines(f: IO[bytes], finished: bool = False) -> Iterator[bytes]:
    """The lines of ``f`` up to the last complete one (a ``.part``'s last line may be partial).
    ``finished``: a finished file's partial last line (a crash, a full disk) is yielded too, so
    the reader counts it as unreadable instead of losing it unseen."""
    for line in f:
        if not line.endswith(b"\n") and not finished:
            return  # still being written: the next pass reads it whole
        yield line


def file_lines(directory: str | os.PathLike[str], log_file: LogFile) -> Iterator[bytes]:
    """Complete lines of one listed file; a ``.part`` finished since listing is read finished."""
    try:
        f = open_file(log_file.path)
    except FileNotFoundError:
        if log_file.finished:
            return  # removed (retention) since listing
        now = {x.key: x for x in list_files(directory)}.get(log_file.key)
        if now is None or not now.finished:
            return
        f, log_file = open_file(now.path), now
    with f:
        yield from complete_lines(f, log_file.finished)


def read_records(
    directory: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Every record in ``directory``, finished and in-progress files alike, each exactly once.

    Streams line by line. A ``.part``'s incomplete last line is skipped (still being written);
    a finished file's is read, and refused below unless it is a whole record.

    Args:
        directory: a payload log directory.
        since: keep records with ``ts >= since`` (naive datetimes are UTC).
        until: keep records with ``ts <= until``. Files entirely outside the window are skipped
            by name, without being opened.

    Raises:
        ValueError: a complete line that is not a JSON record (names the file and line).
    """
    since, until = _utc(since), _utc(until)
    since_s = since.strftime(RECORD_TIME) if since else None
    until_s = until.strftime(RECORD_TIME) if until else None
    for log_file in list_files(directory):
        if not log_file.overlaps(since, until):
            continue
        for lineno, line in enumerate(file_lines(directory, log_file), 1):
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{log_file.path}:{lineno}: not a JSON record: {e}") from e
            ts = rec.get("ts", "")
            if (since_s and ts < since_s) or (until_s and ts > until_s):
                continue
            yield rec


_TS = b'"ts":"'
_N_ROWS = b'"n_rows":'


def record_header(line: bytes) -> tuple[bytes, int] | None:
    """``(ts, n_rows)`` from a record's first bytes, without parsing it, or None when the line is
    not laid out as :func:`record` writes it (then parse it in full)."""
    i = line.find(_TS, 0, 64)
    if i < 0:
        return None
    i += len(_TS)
    end = i + _RECORD_TIME_WIDTH
    if line[end : end + 1] != b'"':
        return None
    j = line.find(_N_ROWS, end, end + 512)
    if j < 0:
        return None
    j += len(_N_ROWS)
    k = line.find(b",", j, j + 24)
    try:
        return line[i:end], int(line[j:k])
    except ValueError:
        return None


def _parse_name_time(text: str) -> datetime:
    return datetime.strptime(text, NAME_TIME).replace(tzinfo=timezone.utc)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
