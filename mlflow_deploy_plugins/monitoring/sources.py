"""Read current (or reference) data for a drift report as a bounded uniform sample, streamed.

Sources: a DataFrame, a Parquet / CSV / JSON Lines file, or a payload-log directory written by the
serving runtime (see :mod:`mlflow_deploy_plugins.serving.payload_log` for the file contract).
Payload logs are read within a time window: files outside it are skipped by name, unopened.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.core.payload_format import FILE_NAME, open_file
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.payloads import read_payload_log
from mlflow_deploy_plugins.monitoring.sampling import RowReservoir, Sample, finish_sample

_logger = logging.getLogger(__name__)

#: Rows read from a table file at a time.
CHUNK_ROWS = 65_536
PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz", ".tsv")
JSONL = (".jsonl", ".jsonl.gz", ".ndjson", ".json")


def read_sample(
    source: Any,
    *,
    side: str,
    sample_size: int,
    seed: int | None,
    io: IOSpec | None = None,
    categorical: set[str] | frozenset[str] = frozenset(),
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sample:
    """A uniform sample of at most ``sample_size`` rows of ``source``.

    Args:
        source: DataFrame, or a path: ``.parquet``, ``.csv``, ``.jsonl``/``.json`` (rows, or
            payload-log records), a payload-log file or directory.
        side: ``current`` or ``reference`` (for messages).
        io: the model's IO contract: names and shapes logged outputs as prediction columns.
        categorical: columns read as text from CSV (zip codes stay ``"01234"``).
        since, until: time window; payload logs only.
    """
    reservoir = RowReservoir(sample_size, seed)
    windowed = since is not None or until is not None
    if isinstance(source, pd.DataFrame):
        _no_window(windowed, "a DataFrame")
        reservoir.add(source)
        return finish_sample(reservoir, list(source.columns), "dataframe", "<DataFrame>", side)
    if not isinstance(source, str | os.PathLike):
        raise InvalidInputError(
            f"{side} data must be a DataFrame or a path, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise InvalidInputError(f"{side} data {str(path)!r} does not exist")
    name = path.name.lower()
    if path.is_dir() or FILE_NAME.match(path.name):
        return read_payload_log(path, reservoir, io, since, until, side, categorical)
    if name.endswith(PARQUET):
        _no_window(windowed, "a Parquet file")
        return _read_parquet(path, reservoir, side)
    if name.endswith(CSV):
        _no_window(windowed, "a CSV file")
        return _read_csv(path, reservoir, categorical, side)
    if name.endswith(JSONL):
        if _is_payload_file(path):
            return read_payload_log(path, reservoir, io, since, until, side, categorical)
        _no_window(windowed, "a JSON Lines file of rows")
        return _read_jsonl_rows(path, reservoir, side)
    raise InvalidInputError(
        f"Cannot read {side} data {str(path)!r}: expected a payload-log directory or a file ending "
        f"in {', '.join(PARQUET + CSV + JSONL)}"
    )


def _no_window(windowed: bool, what: str) -> None:
    if windowed:
        raise InvalidInputError(
            f"A time window (since/until/window) applies to payload logs, whose records carry a "
            f"timestamp; {what} is used whole"
        )


# ------------------------------------------------------------------ tabular files
def _read_parquet(path: Path, reservoir: RowReservoir, side: str) -> Sample:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InvalidInputError(f"Cannot read {side} data {str(path)!r} as Parquet: {e}") from e
    with parquet:
        columns = parquet.schema_arrow.names
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            reservoir.add(batch.to_pandas())
    if reservoir.rows_seen == 0:
        reservoir.add(parquet.schema_arrow.empty_table().to_pandas())
    return finish_sample(reservoir, columns, "parquet", str(path), side, files_read=1)


def _read_csv(path: Path, reservoir: RowReservoir, categorical, side: str) -> Sample:
    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        columns = list(pd.read_csv(path, nrows=0, sep=sep).columns)
        dtype = {c: str for c in columns if c in categorical}
        for chunk in pd.read_csv(path, chunksize=CHUNK_ROWS, dtype=dtype, sep=sep):
            reservoir.add(chunk)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"Cannot read {side} data {str(path)!r} as CSV: {e}") from e
    return finish_sample(reservoir, columns, "csv", str(path), side, files_read=1)


def _read_jsonl_rows(path: Path, reservoir: RowReservoir, side: str) -> Sample:
    columns: dict[str, None] = {}
    try:
        reader = pd.read_json(
            path, lines=True, chunksize=CHUNK_ROWS, dtype=False, convert_dates=False
        )
        with reader:
            for chunk in reader:
                columns.update(dict.fromkeys(chunk.columns))
                reservoir.add(chunk)
    except (ValueError, OSError) as e:
        raise InvalidInputError(f"Cannot read {side} data {str(path)!r} as JSON Lines: {e}") from e
    return finish_sample(reservoir, list(columns), "jsonl", str(path), side, files_read=1)


def _is_payload_file(path: Path) -> bool:
    with open_file(path) as f:
        for line in f:
            if line.strip():
                try:
                    first = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "inputs" in first and "schema_version" in first
    return False
