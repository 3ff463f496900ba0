"""``mlflow-deploy batch`` in-process: a table scored chunk by chunk by the serving runtime's
onnxruntime session (``ServedModel`` over a verified bundle) and decoding (``IOSpec`` binding,
the runtime's CSV value reading, its output typing), the prediction added as a column."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from mlflow_deploy_plugins.batch.tables import TableReader, TableWriter, check_output, format_of
from mlflow_deploy_plugins.core.constants import POSITIONAL_COLUMNS
from mlflow_deploy_plugins.core.iospec import IOSpec, SchemaError
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.serving.codecs.mlflow_csv import CSV_NA, csv_column
from mlflow_deploy_plugins.serving.codecs.mlflow_encode import mlflow_prediction
from mlflow_deploy_plugins.serving.errors import ServingError

_logger = logging.getLogger(__name__)

#: The column the prediction is written to, as MLflow's examples name it
#: (``df.withColumn("prediction", spark_udf(...))``).
PREDICTION_COLUMN = "prediction"
DEFAULT_CHUNK_ROWS = 65_536
_PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class BatchResult:
    """What a batch run wrote."""

    output: str
    rows: int
    seconds: float
    prediction_column: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def score_table(
    model_uri: str,
    input_path: str,
    output_path: str,
    *,
    input_format: str | None = None,
    overwrite: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    prediction_column: str = PREDICTION_COLUMN,
    predict_method: str | None = None,
    threads: int = 0,
) -> BatchResult:
    """Score ``input_path`` with ``model_uri`` and write the input's columns plus
    ``prediction_column`` to ``output_path``.

    Args:
        model_uri: any MLflow model URI; a model that is not ONNX yet goes through the parity
            gate first (nothing is registered), as ``mlflow-deploy serve`` does.
        input_path: a Parquet or CSV file, or a directory of them (Spark's output).
        output_path: the file to write; its format is its extension's, else the input's.
        input_format: ``parquet`` or ``csv`` when the input's name does not tell.
        overwrite: replace an existing output (only once the new one is complete).
        chunk_rows: rows per chunk (memory is bounded by one chunk, not by the file).
        prediction_column: the name of the added column.
        predict_method: ``predict`` (default), ``predict_proba`` ... as the pyfunc's params.
        threads: onnxruntime intra-op threads (0: onnxruntime's default, every core).

    Raises:
        InvalidInputError: unreadable input, missing columns (named), a value the model cannot
            take (column and rows named), a prediction column that already exists.
        AlreadyExistsError: the output exists and ``overwrite`` is false.
    """
    from mlflow_deploy_plugins.bundle import build_bundle
    from mlflow_deploy_plugins.serving.model import ServedModel

    if chunk_rows < 1:
        raise InvalidInputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    fmt = format_of(input_path, input_format)
    out_format = format_of(output_path, default=fmt)
    check_output(output_path, overwrite)
    reader = TableReader(input_path, fmt, chunk_rows)
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-batch-") as work:
        bundle = build_bundle(model_uri, os.path.join(work, "bundle"))
        model = ServedModel(bundle.path, intra_op_threads=threads)
        scorer = ChunkScorer(model, reader.columns, fmt, prediction_column, predict_method)
        writer = TableWriter(output_path, out_format)
        started = time.perf_counter()
        try:
            progress = _Progress(reader.num_rows, started)
            for batch in reader.batches():
                writer.write(scorer.score(batch, first_row=writer.rows, path=input_path))
                progress.update(writer.rows)
            writer.commit(scorer.output_schema(reader.schema))
        except BaseException:
            writer.discard()
            raise
    seconds = time.perf_counter() - started
    result = BatchResult(output_path, writer.rows, seconds, prediction_column)
    _logger.info(
        "Scored %s rows in %.1f s (%s rows/s): %s (input columns + '%s')",
        f"{result.rows:,}",
        seconds,
        f"{result.rows_per_second:,.0f}",
        output_path,
        prediction_column,
    )
    return result


class ChunkScorer:
    """One chunk (an Arrow record batch) -> the same batch plus the prediction column."""

    def __init__(self, model, columns: list[str], fmt: str, prediction_column: str, method):
        self.model, self.io, self.text = model, model.io, fmt == "csv"
        self.prediction_column = prediction_column
        try:
            self.role = self.io.role_for(method)
        except SchemaError as e:
            raise InvalidInputError(str(e)) from e
        self.sources = model_columns(self.io, columns, prediction_column)
        self.dtypes = self.io.column_dtypes()
        self._prediction_type = None

    def score(self, batch, *, first_row: int = 0, path: str = ""):
        rows = f"rows {first_row}-{first_row + batch.num_rows - 1} of {path}"
        try:
            values = {
                c: self._values(batch.column(source), c) for c, source in self.sources.items()
            }
            feed = self.io.encode_columns(values, batch.num_rows)
        except (SchemaError, ServingError) as e:
            raise InvalidInputError(f"{e} ({rows})") from e
        outputs = dict(zip(self.model.output_names, self.model.run(feed), strict=True))
        prediction = to_arrow(mlflow_prediction(self.io, self.role, outputs))
        self._prediction_type = prediction.type
        return batch.append_column(self.prediction_column, prediction)

    def output_schema(self, input_schema):
        """The output's schema (for an empty input: the prediction typed as the source's)."""
        import pyarrow as pa

        kind = self._prediction_type
        if kind is None:
            spec = self.io.output_for(self.role)
            dtype = spec.source_dtype or spec.dtype
            kind = pa.string() if dtype in ("object", "string") else pa.from_numpy_dtype(dtype)
        return input_schema.append(pa.field(self.prediction_column, kind))

    def _values(self, column, name: str) -> np.ndarray:
        """An Arrow column -> the 1-D values ``IOSpec.encode_columns`` binds."""
        if not self.text:
            return column.to_numpy(zero_copy_only=False)
        dtype = self.dtypes[name]
        fast = _text_as_numbers(column, dtype)
        if fast is not None:
            return fast
        # the serving runtime's CSV reading (pandas' semantics, errors naming column and row)
        return csv_column(tuple("" if v is None else v for v in column.to_pylist()), name, dtype)


def model_columns(io: IOSpec, columns: list[str], prediction_column: str) -> dict[str, str]:
    """``model column -> input column``: by name; by position for a tensor-signature model
    (whose column labels carry no meaning) when the input has exactly its width.

    Raises:
        InvalidInputError: naming the columns the model needs that the input lacks, or the
            input's column that has the prediction column's name (never overwritten).
    """
    if prediction_column in columns:
        raise InvalidInputError(
            f"The input already has a column '{prediction_column}': pass "
            "--prediction-column with another name (nothing of the input is overwritten)"
        )
    if io.extra.get(POSITIONAL_COLUMNS) and len(columns) == len(io.columns):
        return dict(zip(io.columns, columns, strict=True))
    missing = [c for c in io.columns if c not in columns]
    if missing:
        raise InvalidInputError(
            f"The input lacks column(s) {missing} that the model needs; it has {columns}. "
            f"The model expects {io.columns}"
        )
    return {c: c for c in io.columns}


def _text_as_numbers(column, dtype: str) -> np.ndarray | None:
    """CSV text -> float numbers with Arrow's parser (missing-value tokens -> NaN); None when
    anything else is in there, for the runtime's reading to decide (and name the value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not dtype.startswith("float"):
        return None
    missing = pc.or_kleene(pc.is_null(column), pc.is_in(column, value_set=_NA_VALUES()))
    cleaned = pc.if_else(missing, pa.scalar(None, pa.string()), column)
    try:
        numbers = pc.cast(cleaned, pa.float64())
    except pa.ArrowInvalid:
        return None
    return numbers.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


_NA_ARRAY: list = []


def _NA_VALUES():  # noqa: N802 - a constant, built once on first use (pyarrow is lazy)
    if not _NA_ARRAY:
        import pyarrow as pa

        _NA_ARRAY.append(pa.array(sorted(CSV_NA), pa.string()))
    return _NA_ARRAY[0]


def to_arrow(prediction: np.ndarray):
    """The pyfunc's prediction as an Arrow column: 1-D as is (int64, float64, str, bool);
    one row of several values (probabilities) as a fixed-size list, as Spark's ``array<double>``."""
    import pyarrow as pa

    arr = np.asarray(prediction)
    if arr.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
    if arr.ndim != 1:
        raise InvalidInputError(
            f"The model returned shape {arr.shape}: one value or one row "
            "of values per input row was expected"
        )
    if arr.dtype.kind == "O":
        return pa.array(arr, type=pa.string(), from_pandas=True)
    return pa.array(arr)


class _Progress:
    """A log line at most every few seconds: rows done (of how many, when known), rate."""

    def __init__(self, total: int | None, started: float):
        self.total, self.started, self.last = total, started, started

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < _PROGRESS_SECONDS:
            return
        self.last = now
        rate = done / (now - self.started)
        of = f" of {self.total:,} ({100 * done / self.total:.0f}%)" if self.total else ""
        _logger.info("Scored %s rows%s, %s rows/s", f"{done:,}", of, f"{rate:,.0f}")
