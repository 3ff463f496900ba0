"""V2 inputs -> the model's feed: the graph's own tensors, or one input per table column (with a
one-pass fast path for plainly valid JSON columns)."""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np

from mlflow_deploy_plugins.serving.codecs.base import (
    FLOAT_DATATYPES,
    INT_DATATYPES,
    NUMERIC_DATATYPES,
    V2_DTYPES,
    Plan,
    columns_from_feed,
    np_dtype,
    v2_datatype,
)
from mlflow_deploy_plugins.serving.codecs.v2_binary import binary_array
from mlflow_deploy_plugins.serving.codecs.values import (
    cast_exact,
    encode_columns,
    first_not,
    fit_shape,
    has_bool,
    json_strings,
    show,
    string_array,
)
from mlflow_deploy_plugins.serving.errors import BadRequest, Unprocessable

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.codecs.v2_decode import V2Input

_logger = logging.getLogger(__name__)


def bind_v2(inputs: list[V2Input], plan: Plan) -> tuple[dict, int, dict | None]:
    """Feed from the graph's own tensors, or from one input per column."""
    bindings, dtypes = plan.bindings, plan.dtypes
    names = [i.name for i in inputs]
    # The graph's own inputs, unless they are also exactly the columns (then: column rules).
    if not plan.same and len(names) == len(bindings) and plan.tensor_names.issuperset(names):
        n_rows = _rows_of(inputs)
        return _v2_tensors(inputs, plan), n_rows, None
    given = set(names)
    columns_list = plan.columns
    if given <= dtypes.keys():
        missing = [c for c in columns_list if c not in given]
        if missing:
            alternative = "" if plan.same else f", or the model's inputs {list(bindings)}"
            raise Unprocessable(
                f"Missing input(s) {missing}: send one input per column {columns_list}"
                f"{alternative}",
                field=missing[0],
            )
        n_rows = _rows_of(inputs)
        columns = {i.name: _v2_column(i, dtypes[i.name]) for i in inputs}
        return encode_columns(plan.io, columns, n_rows), n_rows, columns
    unknown = [n for n in names if n not in bindings and n not in dtypes]
    if unknown:
        alternative = "" if plan.same else f", or send one input per column {columns_list}"
        raise Unprocessable(
            f"Unknown input '{unknown[0]}': the model's inputs are {list(bindings)}{alternative}",
            field=unknown[0],
        )
    if given <= bindings.keys():
        missing = [n for n in bindings if n not in given]
        raise Unprocessable(
            f"Missing input(s) {missing}: the model's inputs are {list(bindings)}",
            field=missing[0],
        )
    raise Unprocessable(
        f"Inputs {names} mix the model's inputs {list(bindings)} with table columns: send "
        f"either the model's inputs or one input per column {columns_list}",
        field=next(n for n in names if n not in bindings),
    )


#: Beyond this magnitude int -> float64 -> float32 may round twice (int -> float32 rounds once).
_EXACT_IN_FLOAT64 = float(2**53)

_V2_KEYS = itemgetter("name", "shape", "datatype", "data")


def v2_columns_fast(items: list, plan: Plan, max_elements: int, bools: bool = True) -> tuple | None:
    """One plainly valid JSON input per column -> ``(feed, n_rows, columns)``, in one pass.

    Reads the request's input objects directly and converts each block of columns once. Returns
    None at the first thing that is not plainly valid (an unknown, missing or repeated name, a
    datatype or shape the column does not take, ``parameters``, too many values, a value that is
    not a number or a string, a column of booleans...): the general path (``v2_inputs``,
    ``bind_v2``) then runs from the start and raises the error it always raised. What this
    returns equals what the general path returns. ``bools``: the request may hold JSON booleans
    (see ``decode_v2_document``).
    """
    positions, strings = plan.positions, plan.string_positions
    width = len(positions)
    if len(items) != width:
        return None
    floats = FLOAT_DATATYPES
    slots: list = [None] * width
    in_order = True
    try:
        n_rows = items[0]["shape"][0]
        if type(n_rows) is not int or n_rows <= 0 or n_rows * width > max_elements:
            return None
        one, two = [n_rows], [n_rows, 1]
        for i, item in enumerate(items):
            # Exactly these 4 keys (no 'parameters'); not an object: TypeError.
            if len(item) != 4:
                return None
            name, shape, datatype, data = _V2_KEYS(item)
            if type(name) is not str or type(shape) is not list or type(data) is not list:
                return None
            j = positions.get(name)
            if j is None or slots[j] is not None:
                return None
            if shape != one and (shape != two or type(shape[1]) is not int):
                return None  # [N] or [N, 1], the same N for all
            if type(shape[0]) is not int or len(data) != n_rows:
                return None
            if j in strings:
                if datatype != "BYTES":
                    return None
                for v in data:
                    if type(v) is not str:
                        return None
            elif datatype not in floats or (bools and has_bool(data)):
                return None  # booleans are refused, not cast
            slots[j] = data
            if j != i:
                in_order = False
    except (KeyError, TypeError, IndexError):
        return None
    feed = {}
    for name, index, target, flat in plan.column_blocks:
        if target is None:  # one string column
            block = string_array(slots[index[0]])
        else:
            many = len(index) > 1
            try:
                block = np.array([slots[j] for j in index] if many else slots[index[0]])
            except (ValueError, TypeError):
                return None
            kind = block.dtype.kind
            if kind not in "fiu" or block.shape != ((len(index), n_rows) if many else (n_rows,)):
                return None
            if (
                kind == "f"
                and target.itemsize < 8
                and not -_EXACT_IN_FLOAT64 < block.min() <= block.max() < _EXACT_IN_FLOAT64
            ):
                return None
            block = block.T.astype(target, order="C") if many else block.astype(target)
        if flat:
            feed[name] = block.reshape(-1)
        elif block.ndim == 1:
            feed[name] = block.reshape(-1, 1)
        else:
            feed[name] = block
    if in_order:
        return feed, n_rows, None  # columns derived on use, as views into the feed
    columns = columns_from_feed(plan.io, feed)
    return feed, n_rows, {item["name"]: columns[item["name"]] for item in items}


def _rows_of(inputs: list[V2Input]) -> int:
    n_rows = -1
    for i in inputs:
        if not i.shape:
            raise Unprocessable(
                f"Input '{i.name}' has shape []: the first dimension must be the rows",
                field=i.name,
            )
        if n_rows < 0:
            n_rows, first = i.shape[0], i.name
        elif i.shape[0] != n_rows:
            raise Unprocessable(
                f"Inputs have different numbers of rows: '{first}' has {n_rows}, "
                f"'{i.name}' has {i.shape[0]}",
                field=i.name,
            )
    if n_rows == 0:
        raise Unprocessable("The request has no rows (the inputs' first dimension is 0)")
    return n_rows


def _v2_tensors(inputs: list[V2Input], plan: Plan) -> dict:
    feed = {}
    for inp in inputs:
        name = inp.name
        binding = plan.bindings[name]
        expected = plan.wire[name]
        if inp.datatype != expected:
            raise Unprocessable(
                f"Input '{name}' has datatype {inp.datatype}; the model expects {expected}",
                field=name,
            )
        arr = _v2_array(inp, binding.dtype)
        if arr.shape[1:] != plan.tails[name]:
            arr = fit_shape(arr, binding, name)
        feed[name] = arr
    return feed


def _v2_column(inp: V2Input, dtype: str) -> np.ndarray:
    if inp.datatype not in _column_datatypes(dtype):
        hint = v2_datatype(dtype)
        if hint not in ("BYTES", "BOOL"):
            kind = "numeric" if np_dtype(dtype).kind == "f" else "integer"
            hint += f" (or another {kind} datatype)"
        raise Unprocessable(
            f"Input '{inp.name}' has datatype {inp.datatype}, but column '{inp.name}' is "
            f"{dtype}: send {hint}",
            field=inp.name,
        )
    if len(inp.shape) > 2 or (len(inp.shape) == 2 and inp.shape[1] != 1):
        raise Unprocessable(
            f"Input '{inp.name}' is a table column and must have shape [N] or [N, 1]; "
            f"got {inp.shape}",
            field=inp.name,
        )
    return _v2_array(inp, dtype).reshape(-1)


def _column_datatypes(dtype: str) -> frozenset[str]:
    if dtype == "string":
        return frozenset({"BYTES"})
    if dtype == "bool":
        return frozenset({"BOOL"})
    if np_dtype(dtype).kind == "f":
        return NUMERIC_DATATYPES
    return INT_DATATYPES


def _v2_array(inp: V2Input, dtype: str) -> np.ndarray:
    """The input's values as ``dtype`` (an IOSpec dtype name), shaped as declared."""
    name, datatype = inp.name, inp.datatype
    if inp.raw is not None:
        arr = binary_array(inp)
    elif datatype == "BYTES":
        arr = json_strings(inp.data, name)
    else:
        arr = _json_numbers(inp.data, datatype, name, inp.bools)
        if datatype in INT_DATATYPES:
            arr = cast_exact(arr, V2_DTYPES[datatype], name)
    if arr.size != inp.count:
        raise Unprocessable(
            f"Input '{name}' has shape {inp.shape} ({inp.count} elements) but {arr.size} values",
            field=name,
        )
    if dtype != "string":
        target = np_dtype(dtype)
        if arr.dtype is not target:
            arr = arr.astype(target) if target.kind == "f" else cast_exact(arr, target, name)
    return arr.reshape(inp.shape)


def _json_numbers(data: list, datatype: str, name: str, bools: bool = True) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise BadRequest(
            f"Input '{name}': 'data' must be a flat list or a regular nested list of numbers "
            "(rows of equal length, at most 64 levels deep)",
            field=name,
        ) from e
    kind = arr.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise Unprocessable(
                f"Input '{name}' has datatype BOOL; its data must be true/false, got "
                f"{show(first_not(data, (bool,)))}",
                field=name,
            )
        return arr
    if kind in "fiu" and not (bools and has_bool(data)):
        return arr  # for integer datatypes the cast checks that floats are whole
    raise Unprocessable(
        f"Input '{name}' has datatype {datatype}; its data must be numbers, got "
        f"{show(first_not(data, (int, float), exclude=(bool,)))}",
        field=name,
    )
