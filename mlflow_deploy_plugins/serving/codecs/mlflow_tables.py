"""MLflow scoring JSON tables -> the model's feed: rows, records, a dict of columns or of the
model's input tensors, read as pandas would read them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlflow_deploy_plugins.core.iospec import InputBinding, IOSpec
from mlflow_deploy_plugins.serving.codecs.base import Plan, np_dtype
from mlflow_deploy_plugins.serving.codecs.values import (
    cast_exact,
    clip,
    encode_columns,
    fit_shape,
    json_strings,
    kind_of,
    show,
    string_array,
)
from mlflow_deploy_plugins.serving.errors import BadRequest, PayloadTooLarge, Unprocessable

_logger = logging.getLogger(__name__)


def from_rows(names: list | None, rows: Any, plan: Plan, max_elements: int):
    """Rows of values (``names`` their columns, None: the model's columns in order) ->
    ``(feed, n_rows, columns or None)``."""
    io = plan.io
    if type(rows) is not list:
        raise BadRequest(f"The table's 'data' must be a list of rows, got {kind_of(rows)}")
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
            got = f"has {len(row)} values" if type(row) in (list, tuple) else f"is {show(row)}"
            what = f"the {width} columns {names}" if positional else f"{width} columns"
            raise Unprocessable(f"Row {i} {got}; expected one value for each of {what}")
    in_order = positional or names == plan.columns
    position = plan.positions if in_order else column_positions(names, io)
    # Fast path: a numeric table for float inputs is one np.asarray and one cast per input.
    if plan.float_blocks is not None:
        feed = _float_rows(rows, plan, None if in_order else position)
        if feed is not None:
            return feed, n_rows, None
    by_column = list(zip(*rows, strict=True))
    dtypes = io.column_dtypes()
    columns = {c: _json_column(by_column[position[c]], c, dtypes[c]) for c in io.columns}
    return encode_columns(io, columns, n_rows), n_rows, columns


def column_positions(names: list, io: IOSpec) -> dict:
    """``column -> index`` in ``names``, refusing a column named twice or one the model needs
    missing (extra columns are ignored, as MLflow does)."""
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


def _float_rows(rows: list, plan: Plan, position: dict | None) -> dict | None:
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
        feed[binding.name] = _fit_rank(block.astype(np_dtype(binding.dtype), copy=False), binding)
    return feed


def _fit_rank(block: np.ndarray, binding: InputBinding) -> np.ndarray:
    return block.reshape(-1) if len(binding.shape) == 1 else block


def from_records(records: list, plan: Plan, max_elements: int):
    """``[{column: value}, ...]`` -> ``(feed, n_rows, columns or None)``; a column missing from
    some records is null there."""
    if not records:
        raise Unprocessable("The request has no rows")
    if plan.positional:
        return from_rows(None, _positional_records(records, plan), plan, max_elements)
    names = plan.columns
    try:
        rows = [plan.getter(r) for r in records]
    except (KeyError, TypeError, IndexError):
        rows = _sparse_records(records, plan.io)
    else:
        if len(names) == 1:
            rows = [[v] for v in rows]  # itemgetter of one key returns the value itself
    return from_rows(names, rows, plan, max_elements)


def _positional_records(records: list, plan: Plan) -> list:
    """Records for a tensor-signature model: their keys, in the order first seen (as pandas
    builds the DataFrame MLflow turns into an array), are the columns by position."""
    keys: dict = {}
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise BadRequest(
                f"Records must be JSON objects mapping column -> value; record {i} is "
                f"{show(record)}"
            )
        keys.update(dict.fromkeys(record))
    if len(keys) != len(plan.columns):
        raise Unprocessable(
            f"The model takes {len(plan.columns)} columns by position; the records have "
            f"{len(keys)} keys {clip(str(list(keys)))}",
            field="columns",
        )
    return [[r.get(k) for k in keys] for r in records]


def _sparse_records(records: list, io: IOSpec) -> list:
    """Records that are not all complete: name what is wrong, or fill gaps with None (NaN)."""
    seen: set = set()
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise BadRequest(
                f"Records must be JSON objects mapping column -> value; record {i} is "
                f"{show(record)}"
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


def from_column_dict(data: dict, io: IOSpec, max_elements: int):
    """``{column: [values]}`` (a scalar is one row) -> ``(feed, n_rows, columns)``."""
    column_positions(list(data), io)
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
    return encode_columns(io, columns, n_rows), n_rows, columns


def from_tensors(data: dict, io: IOSpec, max_elements: int):
    """``{model input: nested list}`` -> ``(feed, n_rows, None)``, shapes checked against the
    graph's."""
    feed, rows, total = {}, {}, 0
    for binding in io.inputs:
        name = binding.name
        values = data[name]
        if binding.dtype == "string":
            arr = json_strings(values if type(values) is list else [values], name)
        else:
            arr = _json_column_array(values, name, binding.dtype)
        if arr.ndim == 1 and len(binding.shape) == 2 and binding.shape[1] == arr.size != 1:
            arr = arr.reshape(1, -1)  # one row given as a flat list
        arr = fit_shape(arr, binding, name)
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
            # null is a missing value, as pandas reads it: refused or answered by
            # encode_columns as the source treats missing values in this column
            if type(v) is not str and v is not None:
                raise Unprocessable(
                    f"Incompatible input types for column '{column}': expected string, "
                    f"got {show(v)} (row {i})",
                    field=column,
                )
        return string_array(values)
    arr = _json_column_array(values, column, dtype, f"column '{column}'")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        i, v = next((i, v) for i, v in enumerate(values) if type(v) is list)
        raise Unprocessable(
            f"Incompatible input types for column '{column}': expected {dtype}, one value per "
            f"row; got {show(v)} (row {i})",
            field=column,
        )
    return arr


def _json_column_array(values: Any, field: str, dtype: str, label: str | None = None) -> np.ndarray:
    """JSON numbers -> array of ``dtype``; ``null`` in a float column is NaN (as in pandas);
    ``true``/``false`` in a float column are 1.0/0.0, as MLflow's schema enforcement casts a
    boolean column to the double a twin's input takes (e.g. a passthrough bool feature)."""
    target = np_dtype(dtype)
    try:
        arr = np.asarray(values)
        ok = arr.dtype.kind in "fiu" or (arr.dtype.kind == "b" and target.kind in "bf")
    except (ValueError, TypeError):
        arr, ok = None, False
    if not ok:
        arr = _with_nulls(values, label or f"input '{field}'", field, dtype, target.kind == "f")
    return cast_exact(arr, target, field, label)


def _with_nulls(values, label: str, field: str, dtype: str, nan_ok: bool) -> np.ndarray:
    """Slow path: find the offending value, or read nulls in a float column as NaN."""
    want = (bool,) if dtype == "bool" else (int, float, bool) if nan_ok else (int, float)
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
                f"got {show(v)} (row {i})",
                field=field,
            )
    return np.asarray(fixed)
