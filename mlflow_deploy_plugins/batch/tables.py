"""Batch input and output files: the format (by extension or given), chunked reading with
pyarrow (memory bounded by the chunk, not the file), and an output written beside its final
path and moved into place only when complete (a failed run leaves no partial file behind and an
existing output untouched)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError

_logger = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def format_of(path: str, given: str | None = None, *, default: str | None = None) -> str:
    """The table format of ``path``: ``given`` when set, else its extension (for a directory,
    the extension of its data files, as Spark writes them), else ``default``.

    Raises:
        InvalidInputError: unknown ``given``, or neither an extension nor a default tells.
    """
    if given is not None:
        if given not in FORMATS:
            raise InvalidInputError(f"Unknown format {given!r}: expected one of {list(FORMATS)}")
        return given
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    if found is None and os.path.isdir(path):
        suffixes = {_EXTENSIONS.get(p.suffix.lower()) for p in _data_files(path)} - {None}
        found = suffixes.pop() if len(suffixes) == 1 else None
    if found is None:
        found = default
    if found is None:
        raise InvalidInputError(
            f"Cannot tell the format of {path!r} from its name: use a .parquet or .csv name "
            f"or pass --format {'|'.join(FORMATS)}"
        )
    return found


def _data_files(directory: str) -> list[Path]:
    """The files of a table directory, without Spark's markers (_SUCCESS, .crc)."""
    return sorted(
        p
        for p in Path(directory).rglob("*")
        if p.is_file() and not p.name.startswith(("_", ".")) and p.suffix != ".crc"
    )


def check_output(path: str, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; refuse a missing parent directory.

    Raises:
        AlreadyExistsError: ``path`` exists and ``overwrite`` is false.
        InvalidInputError: the parent directory does not exist.
    """
    if os.path.lexists(path) and not overwrite:
        raise AlreadyExistsError(
            f"Output {path!r} already exists: choose another path or pass --overwrite to "
            "replace it (it is replaced only once the new output is complete)"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidInputError(f"The output's directory {parent!r} does not exist")


class TableReader:
    """One input table (a file or a directory of files) read in chunks of at most
    ``chunk_rows`` rows. CSV values are read as text (exactly what the file holds, carried
    through unchanged); the scorer decodes the model's columns as the serving runtime reads CSV.
    """

    def __init__(self, path: str, fmt: str, chunk_rows: int):
        import pyarrow as pa
        import pyarrow.dataset as ds

        self.path, self.format, self.chunk_rows = path, fmt, chunk_rows
        try:
            if fmt == "parquet":
                self._dataset = ds.dataset(path, format="parquet")
            else:
                self._dataset = ds.dataset(path, format=_csv_format(path))
            self.schema = self._dataset.schema
            self.num_rows = self._dataset.count_rows() if fmt == "parquet" else None
        except (pa.ArrowException, OSError, ValueError) as e:
            raise unreadable(path, fmt, first_line(e)) from e

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def batches(self) -> Iterator:
        """Record batches of at most ``chunk_rows`` rows, one at a time (little read-ahead)."""
        import pyarrow as pa

        try:
            scanner = self._dataset.scanner(
                batch_size=self.chunk_rows, batch_readahead=1, fragment_readahead=1
            )
            for batch in scanner.to_batches():
                for start in range(0, batch.num_rows, self.chunk_rows):
                    yield batch.slice(start, self.chunk_rows)
        except (pa.ArrowException, OSError) as e:
            raise unreadable(self.path, self.format, first_line(e)) from e


def _csv_format(path: str):
    """Every column as text: the header is read first, then each column typed ``string``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    first = path if os.path.isfile(path) else next(iter(_data_files(path)), None)
    if first is None:
        raise InvalidInputError(f"{path!r} holds no data files")
    with pacsv.open_csv(first) as reader:
        names = reader.schema.names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"{path!r}: the CSV header names column(s) {twice} twice")
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=True,
        null_values=[""],
    )
    return ds.CsvFileFormat(convert_options=convert)


def unreadable(path: str, fmt: str, detail: str) -> InvalidInputError:
    """A read failure, naming the file, the format it was read as, and the way out."""
    other = [f for f in FORMATS if f != fmt]
    return InvalidInputError(
        f"Cannot read {path!r} as {fmt}: {detail.rstrip('.')}. "
        f"If it is {' or '.join(other)}, pass --format {other[0]}"
    )


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class TableWriter:
    """Writes batches to ``<dir>/.<name>.partial-<pid>``; ``commit`` moves the finished file
    to ``path`` (replacing a file or directory there), ``discard`` removes it."""

    def __init__(self, path: str, fmt: str):
        self.path, self.format = path, fmt
        head, tail = os.path.split(os.path.abspath(path))
        self.partial = os.path.join(head, f".{tail}.partial-{os.getpid()}")
        self._writer = None
        self.rows = 0

    def write(self, batch) -> None:
        if self._writer is None:
            self._writer = self._open(batch.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def _open(self, schema):
        import pyarrow as pa

        if self.format == "parquet":
            import pyarrow.parquet as pq

            # Dictionary pages for columns that repeat (strings, ints, labels), not for floats:
            # on measured numbers they never pay off and cost ~15x the rest of the write.
            repeating = [f.name for f in schema if not pa.types.is_floating(f.type)]
            return pq.ParquetWriter(self.partial, schema, use_dictionary=repeating)
        arrays = [
            f.name
            for f in schema
            if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
        ]
        if arrays:
            raise InvalidInputError(
                f"Column(s) {arrays} hold several values per row, which CSV cannot hold: "
                "write Parquet (an output path ending in .parquet)"
            )
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(self.partial, schema)

    def commit(self, schema) -> None:
        """Close and move into place (an empty input still gets its header / schema)."""
        if self._writer is None:
            self._writer = self._open(schema)
        self._writer.close()
        self._writer = None
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as e:  # the partial file is removed all the same
                _logger.debug("Closing the partial output failed: %s", e)
            self._writer = None
        if os.path.exists(self.partial):
            os.remove(self.partial)
