"""MLflow scoring CSV bodies (``text/csv``, header row) -> columns, read as ``pandas.read_csv``
would read them."""

from __future__ import annotations

import csv
import logging
from io import StringIO

import numpy as np

from mlflow_deploy_plugins.core.constants import POSITIONAL_COLUMNS
from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.mlflow_tables import column_positions
from mlflow_deploy_plugins.serving.codecs.values import clip, string_array
from mlflow_deploy_plugins.serving.errors import BadRequest, PayloadTooLarge, Unprocessable

_logger = logging.getLogger(__name__)

#: What pandas.read_csv reads as a missing value (NaN), in every column: its default
#: ``na_values`` (``pandas._libs.parsers.STR_NA_VALUES``), matched exactly in string columns.
CSV_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


def csv_columns(
    body: bytes, io: IOSpec, max_elements: int, *, header: bool = True
) -> tuple[dict, int]:
    """A CSV body (header row, then rows) -> ``(column -> 1-D array, n_rows)``; with
    ``header=False`` (``text/csv; header=absent``) every row is data, in the model's column order.

    Raises:
        BadRequest: not UTF-8, malformed CSV, rows of another width than the header.
        Unprocessable: empty, no rows, a missing column or a value of the wrong type.
        PayloadTooLarge: more than ``max_elements`` values.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadRequest(f"The CSV body is not valid UTF-8 (byte {e.start})") from e
    if not text.strip():
        raise Unprocessable(
            f"The CSV body is empty: expected a header row with the columns {io.columns} and "
            "at least one row"
        )
    try:
        records = [row for row in csv.reader(StringIO(text)) if row]
    except csv.Error as e:
        raise BadRequest(f"Malformed CSV: {e}") from e
    if header:
        names, rows = records[0], records[1:]
        if not rows:
            raise Unprocessable("The CSV has a header but no rows")
        if io.extra.get(POSITIONAL_COLUMNS) and len(names) == len(io.columns):
            names = io.columns  # a tensor-signature model: the header's labels carry no meaning
    else:
        names, rows = io.columns, records
    width = len(names)
    if len(rows) * width > max_elements:
        raise PayloadTooLarge(f"The CSV holds more than {max_elements} values")
    for i, row in enumerate(rows):
        if len(row) != width:
            what = "the header has" if header else "the model has columns"
            raise BadRequest(f"CSV row {i} has {len(row)} fields, {what} {width}")
    position = column_positions(names, io)
    by_column = list(zip(*rows, strict=True))
    dtypes = io.column_dtypes()
    columns = {c: csv_column(by_column[position[c]], c, dtypes[c]) for c in io.columns}
    return columns, len(rows)


def csv_column(values: tuple, column: str, dtype: str) -> np.ndarray:
    """CSV text -> 1-D array of ``dtype``, read as pandas.read_csv(dtype=...) would (also how
    ``mlflow-deploy batch`` reads a CSV file's model columns).

    Raises:
        Unprocessable: a value of the wrong type, naming the column, the value and its row.
    """
    if dtype == "string":
        # an empty cell or "NA" is a missing value (None), not the category "" or "NA":
        # refused or answered as the source treats missing values in this column
        return string_array([None if v in CSV_NA else v for v in values])
    text = np.array(values)
    target = np.dtype(dtype)
    if target.kind == "b":
        lowered = np.char.lower(np.char.strip(text))
        true, false = np.isin(lowered, ("true", "1")), np.isin(lowered, ("false", "0"))
        if not (true | false).all():
            i = int(np.argmin(true | false))
            raise Unprocessable(
                f"Incompatible input types for column '{column}': expected bool (true/false), "
                f"got {values[i]!r} (row {i})",
                field=column,
            )
        return true
    try:
        return text.astype(target)
    except (ValueError, OverflowError):
        pass
    if target.kind in "iu":
        whole = _whole_numbers(text, target)
        if whole is not None:  # "42.0": pandas reads a float column, MLflow takes it as 42
            return whole
    if target.kind == "f":
        lowered = np.char.lower(np.char.strip(text))
        if np.isin(lowered, ("true", "false")).all():
            # pandas reads a column of True/False as bool, and MLflow casts it to the double a
            # twin's input takes (a passthrough bool feature): 1.0/0.0, as in JSON
            return (lowered == "true").astype(target)
        text = np.array(["nan" if v.strip() in CSV_NA else v for v in values])
    for i, v in enumerate(text.tolist()):
        try:
            np.array([v]).astype(target)
        except (ValueError, OverflowError):
            missing = v.strip() in CSV_NA
            raise Unprocessable(
                f"Incompatible input types for column '{column}': expected {dtype}, got "
                f"{'a missing value' if missing else repr(clip(v, 40))} (row {i})",
                field=column,
            ) from None
    return text.astype(target)


def _whole_numbers(text: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """Integer cells written as floats (``42.0``, ``1e3``) as ``target``, or None when some cell
    is not a whole number within its range (JSON's ``42.0`` is taken the same way)."""
    try:
        floats = text.astype(np.float64)
    except ValueError:
        return None
    info = np.iinfo(target)
    if not (np.isfinite(floats).all() and (floats == np.trunc(floats)).all()):
        return None
    if floats.min(initial=0) < info.min or floats.max(initial=0) >= float(info.max) + 1:
        return None
    return floats.astype(target)
