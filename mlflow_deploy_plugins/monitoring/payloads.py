"""Payload-log directories of the serving runtime -> a bounded uniform sample, streamed.

Follows the file contract of :mod:`mlflow_deploy_plugins.core.payload_format` and reads files
with its helpers: files outside the time window are skipped by name, unopened; a ``.part`` is read
up to its last complete line; one identity (``.part`` and finished file) is read once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.core.payload_format import (
    RECORD_TIME,
    LogFile,
    complete_lines,
    file_lines,
    list_files,
    open_file,
    record_header,
)
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.sampling import RowReservoir, Sample, finish_sample
from mlflow_deploy_plugins.monitoring.schema import split_output

_logger = logging.getLogger(__name__)

#: Rows turned into one DataFrame chunk at most.
CHUNK_ROWS = 65_536


def read_payload_log(
    path: Path,
    reservoir: RowReservoir,
    io: IOSpec | None,
    since: datetime | None,
    until: datetime | None,
    side: str,
    categorical=frozenset(),
) -> Sample:
    if path.is_dir():
        every = list_files(path)
        if not every:
            raise InvalidInputError(
                f"{str(path)!r} holds no payload log files (payload-*.jsonl[.part|.gz]); start the "
                "server with --payload-log DIR, or pass a Parquet/CSV/JSONL file"
            )
        files = [f for f in every if f.overlaps(since, until)]
        skipped = len(every) - len(files)
        lines = (line for f in files for line in file_lines(path, f))
    else:
        every = files = [path]
        skipped = 0
        lines = _lines_of(path)
    batcher = _RecordBatcher(io, reservoir, since, until, categorical)
    with _gc_paused():
        batcher.consume(lines)
    where = str(path)
    if reservoir.rows_seen == 0:
        window = _window_text(since, until)
        newest = max((f.end or f.start for f in every if isinstance(f, LogFile)), default=None)
        hint = f"; the newest file ends at {newest.isoformat()}" if newest else ""
        raise InvalidInputError(
            f"No payload records in {where}{window} ({len(every)} file(s), {skipped} outside the "
            f"window{hint}, {batcher.bad_lines} unreadable line(s))"
        )
    if batcher.bad_lines:
        _logger.warning("%s: skipped %d unreadable payload log line(s)", where, batcher.bad_lines)
    return finish_sample(
        reservoir,
        list(batcher.columns),
        "payload-log",
        where,
        side,
        files_read=len(files),
        files_skipped=skipped,
        bad_lines=batcher.bad_lines,
        models=dict(batcher.models),
    )


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while millions of parsed values are kept: it would scan the
    growing heap again and again (a fifth of the read time) and the reader creates no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _window_text(since: datetime | None, until: datetime | None) -> str:
    if since and until:
        return f" between {since.isoformat()} and {until.isoformat()}"
    if since:
        return f" since {since.isoformat()}"
    return f" until {until.isoformat()}" if until else ""


def _lines_of(path: Path) -> Iterator[bytes]:
    with open_file(path) as f:
        yield from complete_lines(f, finished=not path.name.endswith(".part"))


class _RecordBatcher:
    """Payload records -> column arrays -> DataFrame chunks of about CHUNK_ROWS rows.

    Cheap first: the record's time and row count are read from its first bytes (the writer's
    fixed key order) and the rows' sampling keys drawn, so a record outside the window, or whose
    rows cannot enter the sample, is skipped unparsed. Anything unexpected is parsed in full.
    """

    def __init__(self, io, reservoir: RowReservoir, since, until, categorical=frozenset()):
        self.io = io
        self.reservoir = reservoir
        self.categorical = categorical
        self.since = since.strftime(RECORD_TIME).encode() if since else None
        self.until = until.strftime(RECORD_TIME).encode() if until else None
        self.columns: dict[str, None] = {}
        self.models: Counter[str] = Counter()
        self.bad_lines = 0
        self._inputs: dict[str, list] = {}
        self._outputs: dict[str, list] = {}
        self._extend_inputs: dict[str, Any] = {}
        self._extend_outputs: dict[str, Any] = {}
        self._keys: list[float] = []
        # small chunks at first: the sample fills, its bound drops and records start being skipped
        self._chunk_rows = min(CHUNK_ROWS, max(1024, reservoir.size // 2))
        self._input_keys: Any = None
        self._output_keys: Any = None
        self._rows = 0

    def consume(self, lines) -> None:
        since, until, reservoir = self.since, self.until, self.reservoir
        for line in lines:
            keys = None
            header = record_header(line)
            if header is not None:
                ts, n = header
                if (since and ts < since) or (until and ts > until):
                    continue
                keys = reservoir.draw(n)
                if not keys or min(keys) >= reservoir.bound:
                    reservoir.skip(n)
                    continue
            try:
                record = orjson.loads(line)
                inputs, outputs = record["inputs"], record["outputs"]
                if header is None:
                    ts = record["ts"].encode()
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                if line.strip():
                    self.bad_lines += 1
                continue
            if header is None and ((since and ts < since) or (until and ts > until)):
                continue
            self._add(record, inputs, outputs, keys)
        if self._rows:
            self._flush()

    def _add(self, record: dict, inputs: dict, outputs: dict, keys: list[float] | None) -> None:
        # Records of one server share their keys; another set starts a new chunk (pandas then
        # aligns the chunks, a column absent from one holding NaN there).
        if inputs.keys() != self._input_keys or outputs.keys() != self._output_keys:
            if self._rows:
                self._flush()
            self._start(inputs, outputs)
        n = 0
        extend = self._extend_inputs
        for name, values in inputs.items():
            if type(values) is not list:
                values = [values]
            extend[name](values)
            n = len(values)
        if not n and outputs:
            values = next(iter(outputs.values()))
            n = len(values) if type(values) is list else 1
        extend = self._extend_outputs
        for name, values in outputs.items():
            extend[name](values if type(values) is list else [values])
        if keys is None or len(keys) != n:
            keys = self.reservoir.draw(n)
        if not n:
            return
        self._keys += keys
        self._rows += n
        self.models[f"{record.get('model')}/{record.get('version')}"] += 1
        if self._rows >= self._chunk_rows:
            self._flush()

    def _start(self, inputs: dict, outputs: dict) -> None:
        self._input_keys, self._output_keys = inputs.keys(), outputs.keys()
        self._inputs = {name: [] for name in inputs}
        self._outputs = {name: [] for name in outputs}
        # bound methods by name: one dict lookup per column and record
        self._extend_inputs = {name: values.extend for name, values in self._inputs.items()}
        self._extend_outputs = {name: values.extend for name, values in self._outputs.items()}

    def _flush(self) -> None:
        keys = np.array(self._keys)
        lengths = {k: len(v) for k, v in (self._inputs | self._outputs).items()}
        if set(lengths.values()) != {len(keys)}:
            raise InvalidInputError(
                f"Payload records hold columns of different lengths {lengths}: not written by "
                "the serving runtime?"
            )
        pick = _Pick(keys, self.reservoir.bound)
        data: dict[str, Any] = {
            name: np.array(pick(values), dtype=object)
            if name in self.categorical
            else _array(pick(values))
            for name, values in self._inputs.items()
        }
        for name, values in self._outputs.items():
            data.update(split_output(self.io, name, _array(pick(values))))
        self.columns.update(dict.fromkeys(data))
        self.reservoir.skip(len(keys) - len(pick.keys))
        self.reservoir.add(pd.DataFrame(data, copy=False), keys=pick.keys)
        for values in (*self._inputs.values(), *self._outputs.values()):
            values.clear()
        self._keys = []
        self._rows = 0


class _Pick:
    """Select, before any conversion, the rows whose key can still enter the sample."""

    def __init__(self, keys: np.ndarray, bound: float):
        index = np.flatnonzero(keys < bound) if bound < 1.0 else None
        if index is not None and len(index) > 0.7 * len(keys):
            index = None  # selecting most rows costs more than converting them all
        self.keys = keys if index is None else keys[index]
        self._empty = index is not None and len(index) == 0
        self._single = index is not None and len(index) == 1
        self._get = None if index is None or self._empty else operator.itemgetter(*index.tolist())

    def __call__(self, values: list) -> list:
        if self._get is None:
            return [] if self._empty else values
        picked = self._get(values)
        return [picked] if self._single else list(picked)


def _array(values: list) -> np.ndarray:
    try:
        return np.asarray(values)
    except ValueError:  # ragged rows
        return np.asarray(values, dtype=object)
