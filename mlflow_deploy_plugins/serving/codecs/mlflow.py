"""MLflow scoring protocol (``/invocations``): JSON and CSV request decoding, ``predict_method``
roles and response encoding."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from io import StringIO
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import (
    PREDICT_METHODS,
    InputBinding,
    IOSpec,
    SchemaError,
)
from mlflow_deploy_plugins.serving.codecs._common import (
    DEFAULT_MAX_ELEMENTS,
    DecodedRequest,
    _cast,
    _clip,
    _encode_columns,
    _fit_shape,
    _json_strings,
    _kind,
    _len,
    _loads,
    _np,
    _Plan,
    _plan,
    _show,
    _text,
)
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)

#: MLflow scoring: the JSON keys that hold the data.
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


_REQUIRED_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs'"
)

#: What pandas.read_csv reads as a missing value (NaN) in a float column.
_CSV_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


# ====================================================================== decoded requests
class MlflowRequest(DecodedRequest):
    """A decoded MLflow scoring request (``/invocations``)."""

    __slots__ = ("params",)

    def __init__(
        self,
        feed: dict,
        n_rows: int,
        io: IOSpec,
        params: dict | None = None,
        columns: dict | None = None,
    ):
        super().__init__(feed, n_rows, io, columns)
        self.params = params

    def __repr__(self) -> str:
        return (
            f"MlflowRequest(n_rows={self.n_rows}, inputs={list(self.feed)}, params={self.params})"
        )


# ====================================================================== MLflow scoring
def decode_mlflow(
    body: bytes,
    content_type: str | None,
    io: IOSpec,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> MlflowRequest:
    """Decode an MLflow scoring request (``POST /invocations``): JSON or CSV.

    JSON holds exactly one of ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``
    (records, rows, a dict of columns, or for ``inputs``/``instances`` a dict of the model's input
    tensors), and optionally ``params``. CSV has a header row. Extra columns are ignored, as MLflow
    does; ``null`` (JSON) or an NA token (CSV) in a float column is NaN, as pandas reads it.

    Raises:
        UnsupportedMediaType: neither ``application/json`` nor ``text/csv``, or not UTF-8.
        BadRequest: malformed JSON/CSV or not one of the formats above.
        Unprocessable: missing column, a value of the wrong type (message names the column and
            the expected dtype), wrong shape, no rows.
        PayloadTooLarge: more than ``max_elements`` values.
    """
    mime = _mime(content_type)
    if mime == "text/csv":
        columns, n_rows = _csv_columns(body, io, max_elements)
        return MlflowRequest(_encode_columns(io, columns, n_rows), n_rows, io, None, columns)
    doc = _loads(body)
    if type(doc) is not dict:
        got = "a list" if type(doc) is list else f"a {type(doc).__name__}"
        raise BadRequest(f"{_REQUIRED_FORMAT}. Received {got}.")
    keys = [k for k in MLFLOW_FORMATS if k in doc]
    if len(keys) != 1:
        raise BadRequest(f"{_REQUIRED_FORMAT}. Received dictionary with input fields: {list(doc)}")
    params = doc.get("params")
    if params is not None and type(params) is not dict:
        raise BadRequest("'params' must be a JSON object", field="params")
    feed, n_rows, columns = _mlflow_table(keys[0], doc[keys[0]], io, max_elements)
    return MlflowRequest(feed, n_rows, io, params, columns)


def _mime(content_type: str | None) -> str:
    mime, *rest = (content_type or "").split(";")
    mime = mime.strip().lower()
    if mime not in ("application/json", "text/csv"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json or text/csv, got {_clip(content_type or '')!r}"
        )
    for param in rest:
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').lower()
        if key == "charset":
            if value not in ("utf-8", "utf8"):
                raise UnsupportedMediaType(f"Only UTF-8 is supported, got charset={value}")
        elif not (key == "header" and mime == "text/csv") and key:
            raise UnsupportedMediaType(
                f"Unrecognized content type parameter '{key}' (MLflow 2+ scoring protocol: "
                "the format is a key of the JSON body, e.g. 'dataframe_split')"
            )
    return mime


def _mlflow_table(fmt: str, payload: Any, io: IOSpec, max_elements: int):
    """-> (feed, n_rows, columns or None)."""
    plan = _plan(io)
    if fmt == "dataframe_split":
        if type(payload) is not dict:
            raise BadRequest(f"Dataframe split format must be a dictionary. Got {_kind(payload)}.")
        extra = set(payload) - {"columns", "data", "index"}
        if "data" not in payload or extra:
            raise BadRequest(
                "Dataframe split format must have 'data' field and optionally 'columns' and "
                f"'index' fields. Got {sorted(payload)}."
            )
        names, rows, index = payload.get("columns"), payload["data"], payload.get("index")
        if index is not None and (type(index) is not list or len(index) != _len(rows)):
            raise BadRequest("dataframe_split 'index' must be a list with one entry per row")
        if names is not None and names != plan.columns:
            if type(names) is not list:
                raise BadRequest("dataframe_split 'columns' must be a list of column names")
            if names == list(range(len(names))):
                names = None  # pandas' default labels 0..k-1: columns by position
            elif not all(type(n) is str for n in names):
                raise BadRequest("dataframe_split 'columns' must be strings")
        return _from_rows(names, rows, plan, max_elements)
    if fmt == "dataframe_records":
        if type(payload) is not list:
            raise BadRequest(
                f"Dataframe records format must be a list of records. Got {_kind(payload)}."
            )
        return _from_records(payload, plan, max_elements)
    # instances / inputs (TF-serving style)
    if type(payload) is dict:
        if not plan.same and plan.tensor_names == payload.keys():
            return _from_tensors(payload, io, max_elements)
        return _from_column_dict(payload, io, max_elements)
    if type(payload) is not list:
        raise BadRequest(
            f"'{fmt}' must be a list of records, a list of rows, or a dict of columns; "
            f"got {_kind(payload)}",
            field=fmt,
        )
    if payload and type(payload[0]) is dict:
        return _from_records(payload, plan, max_elements)
    if payload and type(payload[0]) is not list:
        if len(plan.columns) == 1:
            return _from_column_dict({plan.columns[0]: payload}, io, max_elements)
        if len(payload) == len(plan.columns):
            return _from_rows(None, [payload], plan, max_elements)  # one row, as numpy 1-D
    return _from_rows(None, payload, plan, max_elements)


def _from_rows(names: list | None, rows: Any, plan: _Plan, max_elements: int):
    io = plan.io
    if type(rows) is not list:
        raise BadRequest(f"The table's 'data' must be a list of rows, got {_kind(rows)}")
    n_rows = len(rows)
    if not n_rows:
        raise Unprocessable("The request has no rows")
    positional = names is None
    names = io.columns if positional else names
    width = len(names)
    if n_rows * width > max_elements:
        raise PayloadTooLarge(
            f"{n_rows} rows of {width} columns exceed the limit of {max_elements} values"
        )
    if width == 1 and type(rows[0]) not in (list, tuple):
        rows = [[v] for v in rows]  # pandas: one column given as a flat list
    for i, row in enumerate(rows):
        if type(row) not in (list, tuple) or len(row) != width:
            got = f"has {len(row)} values" if type(row) in (list, tuple) else f"is {_show(row)}"
            what = f"the {width} columns {names}" if positional else f"{width} columns"
            raise Unprocessable(f"Row {i} {got}; expected one value for each of {what}")
    in_order = positional or names == plan.columns
    position = plan.positions if in_order else _positions(names, io)
    # Fast path: a numeric table for float inputs is one np.asarray and one cast per input.
    if plan.float_blocks is not None:
        feed = _float_rows(rows, plan, None if in_order else position)
        if feed is not None:
            return feed, n_rows, None
    by_column = list(zip(*rows, strict=True))
    dtypes = io.column_dtypes()
    columns = {c: _json_column(by_column[position[c]], c, dtypes[c]) for c in io.columns}
    return _encode_columns(io, columns, n_rows), n_rows, columns


def _positions(names: list, io: IOSpec) -> dict:
    position = {}
    for j, name in enumerate(names):
        if name in position:
            raise Unprocessable(f"Column '{name}' appears more than once", field=str(name))
        position[name] = j
    missing = [c for c in io.columns if c not in position]
    if missing:
        extra = [n for n in names if n not in set(io.columns)]
        note = f" Note that there were extra inputs: {extra}." if extra else ""
        raise Unprocessable(
            f"Model is missing inputs {missing}.{note} The model expects {io.columns}.",
            field=missing[0],
        )
    return position


def _float_rows(rows: list, plan: _Plan, position: dict | None) -> dict | None:
    """Rows of numbers -> float inputs; None when the per-column path must look closer."""
    try:
        table = np.asarray(rows)
    except (ValueError, TypeError):
        return None
    if table.ndim != 2 or table.dtype.kind not in "fiu":
        return None  # the per-column path says which column is wrong
    feed = {}
    for binding, index in plan.float_blocks:
        if position is not None:
            index = [position[c] for c in binding.columns]
        block = table if index is None else table[:, index]
        feed[binding.name] = _fit_rank(block.astype(_np(binding.dtype), copy=False), binding)
    return feed


def _from_records(records: list, plan: _Plan, max_elements: int):
    if not records:
        raise Unprocessable("The request has no rows")
    names = plan.columns
    try:
        rows = [plan.getter(r) for r in records]
    except (KeyError, TypeError, IndexError):
        rows = _sparse_records(records, plan.io)
    else:
        if len(names) == 1:
            rows = [[v] for v in rows]  # itemgetter of one key returns the value itself
    return _from_rows(names, rows, plan, max_elements)


def _sparse_records(records: list, io: IOSpec) -> list:
    """Records that are not all complete: name what is wrong, or fill gaps with None (NaN)."""
    seen: set = set()
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise BadRequest(
                f"Records must be JSON objects mapping column -> value; record {i} is "
                f"{_show(record)}"
            )
        seen.update(record)
    missing = [c for c in io.columns if c not in seen]
    if missing:
        extra = sorted(seen - set(io.columns))
        note = f" Note that there were extra inputs: {extra}." if extra else ""
        raise Unprocessable(
            f"Model is missing inputs {missing}.{note} The model expects {io.columns}.",
            field=missing[0],
        )
    return [[r.get(c) for c in io.columns] for r in records]


def _from_column_dict(data: dict, io: IOSpec, max_elements: int):
    _positions(list(data), io)
    values = {c: data[c] if type(data[c]) is list else [data[c]] for c in io.columns}
    lengths = {c: len(v) for c, v in values.items()}
    n_rows = lengths[io.columns[0]]
    for c, n in lengths.items():
        if n != n_rows:
            raise Unprocessable(
                f"Column '{c}' has {n} rows, column '{io.columns[0]}' has {n_rows}", field=c
            )
    if n_rows == 0:
        raise Unprocessable("The request has no rows")
    if n_rows * len(values) > max_elements:
        raise PayloadTooLarge(f"{n_rows} rows exceed the limit of {max_elements} values")
    dtypes = io.column_dtypes()
    columns = {c: _json_column(v, c, dtypes[c]) for c, v in values.items()}
    return _encode_columns(io, columns, n_rows), n_rows, columns


def _from_tensors(data: dict, io: IOSpec, max_elements: int):
    feed, rows, total = {}, {}, 0
    for binding in io.inputs:
        name = binding.name
        values = data[name]
        if binding.dtype == "string":
            arr = _json_strings(values if type(values) is list else [values], name)
        else:
            arr = _json_column_array(values, name, binding.dtype)
        if arr.ndim == 1 and len(binding.shape) == 2 and binding.shape[1] == arr.size != 1:
            arr = arr.reshape(1, -1)  # one row given as a flat list
        arr = _fit_shape(arr, binding, name)
        total += arr.size
        rows.setdefault(arr.shape[0], name)
        feed[name] = arr
    if total > max_elements:
        raise PayloadTooLarge(f"The inputs hold {total} values, the limit is {max_elements}")
    if len(rows) > 1:
        raise Unprocessable(
            f"Inputs have different numbers of rows {sorted(rows)}", field=next(iter(rows.values()))
        )
    n_rows = next(iter(rows))
    if n_rows == 0:
        raise Unprocessable("The request has no rows")
    return feed, n_rows, None


def _json_column(values: Sequence, column: str, dtype: str) -> np.ndarray:
    """One column's JSON values -> 1-D array of ``dtype``; errors name the column and type."""
    if dtype == "string":
        for i, v in enumerate(values):
            if type(v) is not str:
                raise Unprocessable(
                    f"Incompatible input types for column '{column}': expected string, "
                    f"got {_show(v)} (row {i})",
                    field=column,
                )
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr
    arr = _json_column_array(values, column, dtype, f"column '{column}'")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        i, v = next((i, v) for i, v in enumerate(values) if type(v) is list)
        raise Unprocessable(
            f"Incompatible input types for column '{column}': expected {dtype}, one value per "
            f"row; got {_show(v)} (row {i})",
            field=column,
        )
    return arr


def _json_column_array(values: Any, field: str, dtype: str, label: str | None = None) -> np.ndarray:
    """JSON numbers -> array of ``dtype``; ``null`` in a float column is NaN (as in pandas)."""
    target = _np(dtype)
    try:
        arr = np.asarray(values)
        ok = arr.dtype.kind in "fiu" or (arr.dtype.kind == "b" and target.kind == "b")
    except (ValueError, TypeError):
        arr, ok = None, False
    if not ok:
        arr = _with_nulls(values, label or f"input '{field}'", field, dtype, target.kind == "f")
    return _cast(arr, target, field, label)


def _with_nulls(values, label: str, field: str, dtype: str, nan_ok: bool) -> np.ndarray:
    """Slow path: find the offending value, or read nulls in a float column as NaN."""
    want = (bool,) if dtype == "bool" else (int, float)
    fixed = []
    for i, v in enumerate(values):
        if v is None and nan_ok:
            fixed.append(np.nan)
        elif type(v) in want:
            fixed.append(v)
        else:
            expected = "true/false" if dtype == "bool" else "numeric"
            raise Unprocessable(
                f"Incompatible input types for {label}: expected {dtype} ({expected}), "
                f"got {_show(v)} (row {i})",
                field=field,
            )
    return np.asarray(fixed)


def _csv_columns(body: bytes, io: IOSpec, max_elements: int) -> tuple[dict, int]:
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
    header, rows = records[0], records[1:]
    if not rows:
        raise Unprocessable("The CSV has a header but no rows")
    width = len(header)
    if len(rows) * width > max_elements:
        raise PayloadTooLarge(f"The CSV holds more than {max_elements} values")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise BadRequest(f"CSV row {i} has {len(row)} fields, the header has {width}")
    position = _positions(header, io)
    by_column = list(zip(*rows, strict=True))
    dtypes = io.column_dtypes()
    columns = {c: _csv_column(by_column[position[c]], c, dtypes[c]) for c in io.columns}
    return columns, len(rows)


def _csv_column(values: tuple, column: str, dtype: str) -> np.ndarray:
    """CSV text -> 1-D array of ``dtype``, read as pandas.read_csv(dtype=...) would."""
    if dtype == "string":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr
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
    if target.kind == "f":
        text = np.array(["nan" if v.strip() in _CSV_NA else v for v in values])
    for i, v in enumerate(text.tolist()):
        try:
            np.array([v]).astype(target)
        except (ValueError, OverflowError):
            missing = v.strip() in _CSV_NA
            raise Unprocessable(
                f"Incompatible input types for column '{column}': expected {dtype}, got "
                f"{'a missing value' if missing else repr(_clip(v, 40))} (row {i})",
                field=column,
            ) from None
    return text.astype(target)


def _fit_rank(block: np.ndarray, binding: InputBinding) -> np.ndarray:
    return block.reshape(-1) if len(binding.shape) == 1 else block


# ====================================================================== MLflow encode, roles
def role_for(io: IOSpec, predict_method: Any = None) -> str:
    """The output role ``/invocations`` returns for ``params.predict_method``
    (``IOSpec.role_for``, shared with the pyfunc flavor).

    Raises:
        BadRequest: unknown ``predict_method``, or the model has no output for it.
    """
    if predict_method is not None and type(predict_method) is not str:
        raise BadRequest(
            f"predict_method must be one of {sorted(PREDICT_METHODS)}, got {_show(predict_method)}",
            field="predict_method",
        )
    try:
        return io.role_for(predict_method)
    except SchemaError as e:
        raise BadRequest(str(e), field="predict_method") from None


def mlflow_prediction(io: IOSpec, role: str, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The array the pyfunc flavor returns for ``role``, from the session's outputs."""
    spec = io.output_for(role)
    return io.as_source(spec, outputs[spec.name])


def encode_mlflow(outputs_for_role: np.ndarray) -> bytes:
    """``{"predictions": [...]}`` as ``mlflow models serve`` returns a numpy result."""
    arr = np.asarray(outputs_for_role)
    if arr.ndim and arr.dtype.kind in "fiub" and arr.dtype.isnative:
        return orjson.dumps(
            {"predictions": np.ascontiguousarray(arr)}, option=orjson.OPT_SERIALIZE_NUMPY
        )
    return orjson.dumps({"predictions": arr.tolist()}, default=_text)
