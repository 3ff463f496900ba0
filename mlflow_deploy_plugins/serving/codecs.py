"""Request bodies -> ONNX feeds, and outputs -> response bodies, for the Open Inference Protocol V2
(JSON and the binary tensor extension) and MLflow's scoring protocol. Pure functions, no I/O.

Every client mistake raises a ``ServingError`` subclass (``errors.py``) naming the field at fault.
Numeric data never goes through a per-element Python loop: ``np.asarray`` on the parsed list, or
``np.frombuffer`` on binary tensor data.
"""

from __future__ import annotations

import csv
import struct
from collections.abc import Iterable, Mapping, Sequence
from io import StringIO
from math import prod
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    InternalError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    from_schema_error,
)
from mlflow_deploy_plugins.serving.iospec import (
    LABEL,
    PROBABILITIES,
    VALUE,
    InputBinding,
    IOSpec,
    SchemaError,
)

#: Most tensor elements one request may carry (all inputs together), checked before allocating.
DEFAULT_MAX_ELEMENTS = 1 << 24
#: Most dimensions a V2 input may declare.
MAX_RANK = 16

HEADER_LENGTH = "inference-header-content-length"
#: Content type of a V2 response that carries binary tensor data (``encode_v2`` returned headers).
V2_BINARY_CONTENT_TYPE = "application/octet-stream"

#: V2 datatype -> numpy dtype of its binary (little-endian) representation.
V2_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_KIND_SIZE_TO_V2 = {
    (dt.kind, dt.itemsize): name for name, dt in V2_DTYPES.items() if name != "BYTES"
}
_INTS = frozenset(n for n in V2_DTYPES if n.startswith(("INT", "UINT")))
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_NUMERIC = _INTS | _FLOATS

#: MLflow scoring: the JSON keys that hold the data, and ``predict_method`` -> output role.
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PREDICT_METHODS = {"predict": None, "predict_proba": PROBABILITIES, "predict_values": VALUE}
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
class DecodedRequest:
    """A feed ready for onnxruntime plus the same rows by column (derived on first use)."""

    __slots__ = ("feed", "n_rows", "_columns", "_io")

    def __init__(self, feed: dict, n_rows: int, io: IOSpec, columns: dict | None = None):
        self.feed = feed
        self.n_rows = n_rows
        self._io = io
        self._columns = columns

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """``column -> 1-D array`` (for the payload log); views into the feed when derived."""
        if self._columns is None:
            self._columns = columns_from_feed(self._io, self.feed)
        return self._columns


class V2Request(DecodedRequest):
    """A decoded Open Inference Protocol V2 inference request."""

    __slots__ = ("id", "requested_outputs", "binary_outputs", "parameters")

    def __init__(
        self,
        id: str | None,
        feed: dict,
        n_rows: int,
        io: IOSpec,
        requested_outputs: list[str] | None = None,
        binary_outputs: frozenset[str] = frozenset(),
        parameters: dict | None = None,
        columns: dict | None = None,
    ):
        self.feed, self.n_rows, self._io, self._columns = feed, n_rows, io, columns
        self.id = id
        self.requested_outputs = requested_outputs
        self.binary_outputs = binary_outputs
        self.parameters = parameters or {}

    def __repr__(self) -> str:
        return f"V2Request(id={self.id!r}, n_rows={self.n_rows}, inputs={list(self.feed)})"


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


def columns_from_feed(io: IOSpec, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split each input tensor back into its table columns (views, no copies)."""
    columns = {}
    for binding in io.inputs:
        tensor = feed[binding.name]
        if tensor.ndim == 1:
            columns[binding.columns[0]] = tensor
        else:
            for i, column in enumerate(binding.columns):
                columns[column] = tensor[:, i]
    return columns


# ====================================================================== V2 decode
class _Plan:
    """What decoding reads from an IOSpec, computed once per spec: the hot path does no setup."""

    __slots__ = (
        "io",
        "bindings",
        "dtypes",
        "wire",
        "tails",
        "outputs",
        "tensor_names",
        "same",
        "columns",
        "positions",
        "float_blocks",
        "getter",
        "column_blocks",
        "string_positions",
        "column_names",
    )

    def __init__(self, io: IOSpec):
        self.io = io
        self.bindings = {b.name: b for b in io.inputs}
        self.dtypes = io.column_dtypes()
        self.tensor_names = frozenset(self.bindings)
        #: One input per column under the column's own name: no separate tensor form.
        self.same = self.tensor_names == frozenset(self.dtypes)
        self.wire = {b.name: _v2_of(b.dtype) for b in io.inputs}
        #: Declared non-batch dims per input, when all are fixed (else None: checked one by one).
        self.tails = {
            b.name: tuple(b.shape[1:]) if all(type(d) is int for d in b.shape[1:]) else None
            for b in io.inputs
        }
        self.outputs = [o.name for o in io.outputs]
        self.columns = io.columns
        self.positions = {c: j for j, c in enumerate(self.columns)}
        self.getter = itemgetter(*self.columns) if self.columns else None
        #: For rows in ``columns`` order, when every input is float: (binding, column indexes or
        #: None for all of them in order). None when some input is not float.
        everything = list(range(len(self.columns)))
        self.float_blocks = None
        if all(b.dtype.startswith("float") for b in io.inputs):
            self.float_blocks = []
            for b in io.inputs:
                index = [self.positions[c] for c in b.columns]
                self.float_blocks.append((b, None if index == everything else index))
        #: One V2 input per column (``_v2_columns_fast``): blocks of column positions.
        self.column_blocks = _column_blocks(io, self.positions)
        self.column_names = tuple(self.columns)
        self.string_positions = frozenset(
            self.positions[c] for b in io.inputs if b.dtype == "string" for c in b.columns
        )


def _column_blocks(io: IOSpec, positions: dict) -> list | None:
    """For V2 bodies with one input per column: per binding ``(name, column positions, numpy
    dtype or None for one string column, rank 1?)``; None when some binding takes the general
    path (int or bool columns, several string columns, a declared width its columns do not fill,
    a column named twice).
    """
    if len(positions) != len(io.columns):
        return None
    blocks = []
    for b in io.inputs:
        width = b.shape[1] if len(b.shape) > 1 else None
        if not b.columns or (isinstance(width, int) and width != len(b.columns)):
            return None
        if b.dtype == "string":
            if len(b.columns) != 1:
                return None
            blocks.append((b.name, [positions[b.columns[0]]], None, len(b.shape) == 1))
        elif b.dtype in ("float32", "float64"):
            index = [positions[c] for c in b.columns]
            blocks.append((b.name, index, _np(b.dtype), len(b.shape) == 1))
        else:
            return None
    return blocks


_PLANS: dict[int, _Plan] = {}


def _plan(io: IOSpec) -> _Plan:
    plan = _PLANS.get(id(io))
    if plan is None or plan.io is not io:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        plan = _PLANS[id(io)] = _Plan(io)
    return plan


class _V2Input:
    __slots__ = ("name", "datatype", "shape", "count", "data", "raw")

    def __init__(self, name, datatype, shape, count, data, raw):
        self.name, self.datatype, self.shape, self.count = name, datatype, shape, count
        self.data, self.raw = data, raw


def decode_v2(
    body: bytes,
    headers: Mapping[str, str],
    io: IOSpec,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> V2Request:
    """Decode a V2 inference request (JSON, or JSON header + binary tensor data).

    Inputs are either the ONNX graph's own inputs (``io.inputs`` names, shapes and datatypes), or
    one 1-D (or ``[N, 1]``) input per table column (``io.columns``), numeric datatypes converted.

    ``parameters`` honoured: the request's ``binary_data_output``, each output's ``binary_data``
    (``binary_data_output`` accepted too), each input's ``binary_data_size``. Refused:
    ``classification`` and ``shared_memory_*`` (not supported). Others are ignored, as the
    protocol allows, and returned in ``V2Request.parameters``.

    Args:
        body: The request body.
        headers: Request headers, names lower-cased (``Inference-Header-Content-Length``).
        io: The served model's IOSpec.
        max_elements: Most tensor elements accepted, over all inputs.

    Raises:
        BadRequest: not JSON, or not a V2 request (structure, binary sizes).
        Unprocessable: unknown or missing input or output, wrong datatype or shape, no rows.
        PayloadTooLarge: more than ``max_elements`` elements declared.
    """
    plan = _plan(io)
    header_length = _header_length(headers, len(body)) if headers else None
    if header_length is None:
        doc, binary = _loads(body), None
    else:
        view = memoryview(body)
        doc, binary = _loads(view[:header_length]), view[header_length:]
    if type(doc) is not dict:
        raise BadRequest("A V2 inference request must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise BadRequest("'id' must be a string", field="id")
    parameters = doc.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        raise BadRequest("The request's 'parameters' must be a JSON object", field="parameters")
    items = doc.get("inputs")
    fast = None
    if binary is None and plan.column_blocks is not None and type(items) is list:
        fast = _v2_columns_fast(items, plan, max_elements)
    if fast is None:
        inputs = _v2_inputs(items, binary, max_elements)
        feed, n_rows, columns = _bind_v2(inputs, plan)
    else:
        feed, n_rows, columns = fast
    outputs = doc.get("outputs")
    if outputs is None and not parameters:
        requested, binary_outputs = None, frozenset()
    else:
        requested, binary_outputs = _v2_outputs(outputs, parameters, plan.outputs)
    return V2Request(
        request_id, feed, n_rows, io, requested, binary_outputs, parameters, columns=columns
    )


def _header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    value = headers.get(HEADER_LENGTH)
    if value is None:
        value = headers.get("Inference-Header-Content-Length")
        if value is None:
            return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        length = -1
    if not 0 <= length <= body_length:
        raise BadRequest(
            f"Inference-Header-Content-Length must be the JSON header's size in bytes, between 0 "
            f"and the body size {body_length}; got {_clip(str(value))}",
            field="Inference-Header-Content-Length",
        )
    return length


def _v2_inputs(inputs: Any, binary: memoryview | None, max_elements: int) -> list[_V2Input]:
    if type(inputs) is not list or not inputs:
        raise BadRequest(
            "A V2 inference request needs 'inputs': a non-empty list of "
            '{"name", "shape", "datatype", "data"} objects',
            field="inputs",
        )
    parsed, seen, offset, total = [], set(), 0, 0
    for i, item in enumerate(inputs):
        if type(item) is not dict:
            raise BadRequest(f"inputs[{i}] must be a JSON object", field="inputs")
        name = item.get("name")
        if type(name) is not str:
            raise BadRequest(f"inputs[{i}] needs a string 'name'", field="inputs")
        if name in seen:
            raise BadRequest(f"Input '{name}' is given more than once", field=name)
        seen.add(name)
        datatype = item.get("datatype")
        if type(datatype) is not str or datatype not in V2_DTYPES:
            raise BadRequest(
                f"Input '{name}' has datatype {_show(datatype)}; V2 datatypes are "
                f"{', '.join(V2_DTYPES)}",
                field=name,
            )
        shape = item.get("shape")
        count = _count(shape)
        if count < 0:
            raise BadRequest(
                f"Input '{name}' needs 'shape': a list of at most {MAX_RANK} non-negative "
                f"integers, got {_show(shape)}",
                field=name,
            )
        total += count
        if total > max_elements:
            raise PayloadTooLarge(
                f"Input '{name}' has shape {shape} ({count} elements); a request may carry at "
                f"most {max_elements} elements",
                field=name,
            )
        data, raw = item.get("data"), None
        params = item.get("parameters")
        if params is not None:
            raw, offset = _binary_part(name, params, data, binary, offset)
        if raw is None and type(data) is not list:
            raise BadRequest(
                f"Input '{name}' needs 'data': a flat (row-major) or nested list, "
                f"got {_show(data)}",
                field=name,
            )
        parsed.append(_V2Input(name, datatype, shape, count, data, raw))
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"The body has {len(binary) - offset} bytes after the last input's binary data; "
            "binary_data_size values must add up to the binary part of the body",
            field="inputs",
        )
    return parsed


def _count(shape: Any) -> int:
    """Elements of a declared shape, or -1 when it is not a list of non-negative integers."""
    if type(shape) is not list or len(shape) > MAX_RANK:
        return -1
    for d in shape:
        if type(d) is not int or d < 0:
            return -1
    return prod(shape)


def _binary_part(name: str, params: Any, data: Any, binary: memoryview | None, offset: int):
    """-> (this input's bytes or None, the next offset), from ``parameters.binary_data_size``."""
    if type(params) is not dict:
        raise BadRequest(f"'parameters' of input '{name}' must be a JSON object", field=name)
    if "shared_memory_region" in params:
        raise BadRequest(f"Input '{name}': shared-memory inputs are not supported", field=name)
    size = params.get("binary_data_size")
    if size is None:
        return None, offset
    if binary is None:
        raise BadRequest(
            f"Input '{name}' has binary_data_size but the request has no "
            "Inference-Header-Content-Length header",
            field=name,
        )
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise BadRequest(
            f"Input '{name}' has binary_data_size {_show(size)} but only "
            f"{len(binary) - offset} bytes of binary data remain",
            field=name,
        )
    if data is not None:
        raise BadRequest(f"Input '{name}' has both 'data' and binary data", field=name)
    return binary[offset : offset + size], offset + size


def _bind_v2(inputs: list[_V2Input], plan: _Plan) -> tuple[dict, int, dict | None]:
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
        return _encode_columns(plan.io, columns, n_rows), n_rows, columns
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


def _v2_columns_fast(items: list, plan: _Plan, max_elements: int) -> tuple | None:
    """One plainly valid JSON input per column -> ``(feed, n_rows, columns)``, in one pass.

    Reads the request's input objects directly and converts each block of columns once. Returns
    None at the first thing that is not plainly valid (an unknown, missing or repeated name, a
    datatype or shape the column does not take, ``parameters``, too many values, a value that is
    not a number or a string, a column of booleans...): the general path (``_v2_inputs``,
    ``_bind_v2``) then runs from the start and raises the error it always raised. What this
    returns equals what the general path returns.
    """
    positions, strings = plan.positions, plan.string_positions
    width = len(positions)
    if len(items) != width:
        return None
    floats = _FLOATS
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
                if "\x00" in "".join(data):
                    return None  # IOSpec.encode_columns drops trailing NULs (numpy str dtype)
            elif datatype not in floats or type(data[0]) is bool:
                return None  # booleans are refused, not cast
            slots[j] = data
            if j != i:
                in_order = False
    except (KeyError, TypeError, IndexError):
        return None
    feed = {}
    for name, index, target, flat in plan.column_blocks:
        if target is None:  # one string column
            block = np.empty(n_rows, dtype=object)
            block[:] = slots[index[0]]
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


def _rows_of(inputs: list[_V2Input]) -> int:
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


def _v2_tensors(inputs: list[_V2Input], plan: _Plan) -> dict:
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
            arr = _fit_shape(arr, binding, name)
        feed[name] = arr
    return feed


def _v2_column(inp: _V2Input, dtype: str) -> np.ndarray:
    if inp.datatype not in _column_datatypes(dtype):
        hint = _v2_of(dtype)
        if hint not in ("BYTES", "BOOL"):
            hint += " (or another numeric datatype)"
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
    if _np(dtype).kind == "f":
        return _NUMERIC
    return _INTS


def _v2_array(inp: _V2Input, dtype: str) -> np.ndarray:
    """The input's values as ``dtype`` (an IOSpec dtype name), shaped as declared."""
    name, datatype = inp.name, inp.datatype
    if inp.raw is not None:
        arr = _v2_binary(inp)
    elif datatype == "BYTES":
        arr = _json_strings(inp.data, name)
    else:
        arr = _json_numbers(inp.data, datatype, name)
        if datatype in _INTS:
            arr = _cast(arr, V2_DTYPES[datatype], name)
    if arr.size != inp.count:
        raise Unprocessable(
            f"Input '{name}' has shape {inp.shape} ({inp.count} elements) but {arr.size} values",
            field=name,
        )
    if dtype != "string":
        target = _np(dtype)
        if arr.dtype is not target:
            arr = arr.astype(target) if target.kind == "f" else _cast(arr, target, name)
    return arr.reshape(inp.shape)


def _v2_binary(inp: _V2Input) -> np.ndarray:
    if inp.datatype == "BYTES":
        return _unpack_strings(inp.raw, inp.count, inp.name)
    wire = V2_DTYPES[inp.datatype]
    if len(inp.raw) != inp.count * wire.itemsize:
        raise Unprocessable(
            f"Input '{inp.name}' has binary_data_size {len(inp.raw)}, but shape {inp.shape} of "
            f"{inp.datatype} takes {inp.count * wire.itemsize} bytes",
            field=inp.name,
        )
    if inp.datatype == "BOOL":
        return np.frombuffer(inp.raw, dtype=np.uint8) != 0
    return np.frombuffer(inp.raw, dtype=wire)  # zero-copy, read-only: onnxruntime accepts it


def _json_numbers(data: list, datatype: str, name: str) -> np.ndarray:
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
                f"{_show(_first_not(data, (bool,)))}",
                field=name,
            )
        return arr
    if kind in "fiu":
        return arr  # for integer datatypes the cast checks that floats are whole
    raise Unprocessable(
        f"Input '{name}' has datatype {datatype}; its data must be numbers, got "
        f"{_show(_first_not(data, (int, float), exclude=(bool,)))}",
        field=name,
    )


def _json_strings(data: Any, name: str, label: str | None = None) -> np.ndarray:
    label = label or f"Input '{name}'"
    try:
        arr = np.array(data, dtype=object)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{label}: 'data' must be a list of strings", field=name) from e
    for v in arr.reshape(-1):
        if type(v) is not str:
            raise Unprocessable(f"{label} holds strings (BYTES); got {_show(v)}", field=name)
    return arr


def _unpack_strings(raw: memoryview, count: int, name: str) -> np.ndarray:
    """BYTES binary data: each element is a 4-byte little-endian length, then the bytes."""
    values, offset, end = [], 0, len(raw)
    unpack = _LENGTH.unpack_from
    while offset < end and len(values) <= count:
        if offset + 4 > end:
            raise BadRequest(f"Input '{name}': BYTES binary data is truncated", field=name)
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(f"Input '{name}': BYTES binary data is truncated", field=name)
        try:
            values.append(str(raw[offset : offset + length], "utf-8"))
        except UnicodeDecodeError as e:
            raise Unprocessable(
                f"Input '{name}': element {len(values)} is not UTF-8 text", field=name
            ) from e
        offset += length
    if offset != end or len(values) != count:
        raise Unprocessable(
            f"Input '{name}' declares {count} elements but its BYTES binary data holds "
            f"{len(values)}{' or more' if offset != end else ''}",
            field=name,
        )
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _fit_shape(
    arr: np.ndarray, binding: InputBinding, field: str, label: str | None = None
) -> np.ndarray:
    """Check a tensor against the graph's declared shape; [N] <-> [N, 1] are interchangeable."""
    want = binding.shape
    if len(want) == 2 and arr.ndim == 1 and want[1] in (1, None) and len(binding.columns) == 1:
        arr = arr.reshape(-1, 1)
    elif len(want) == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != len(want) or any(
        type(w) is int and w != got for w, got in zip(want[1:], arr.shape[1:], strict=True)
    ):
        wanted = [w if type(w) is int else -1 for w in want]
        label = label or f"Input '{field}'"
        raise Unprocessable(
            f"{label} has shape {list(arr.shape)}; the model expects "
            f"{wanted} (-1: any number of rows)",
            field=field,
        )
    return arr


def _v2_outputs(outputs: Any, parameters: dict, known: list[str]) -> tuple[list | None, frozenset]:
    all_binary = _flag(parameters, "binary_data_output", "parameters")
    if outputs is None:
        return None, frozenset(known) if all_binary else frozenset()
    if type(outputs) is not list:
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects", field="outputs")
    requested, binary = [], set()
    for i, item in enumerate(outputs):
        if type(item) is not dict or type(item.get("name")) is not str:
            raise BadRequest(
                f"outputs[{i}] must be an object with a string 'name'", field="outputs"
            )
        name = item["name"]
        if name not in known:
            raise Unprocessable(
                f"Unknown output '{name}': the model's outputs are {known}", field=name
            )
        params = item.get("parameters") or {}
        if type(params) is not dict:
            raise BadRequest(f"'parameters' of output '{name}' must be a JSON object", field=name)
        if params.get("classification"):
            raise Unprocessable(
                f"Output '{name}': the 'classification' parameter is not supported", field=name
            )
        flag = params.get("binary_data", params.get("binary_data_output"))
        if flag is None:
            flag = all_binary
        elif type(flag) is not bool:
            raise BadRequest(f"Output '{name}': binary_data must be true or false", field=name)
        requested.append(name)
        if flag:
            binary.add(name)
    return requested, frozenset(binary)


def _flag(params: dict, key: str, field: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"'{key}' must be true or false, got {_show(value)}", field=field)
    return value


# ====================================================================== V2 encode
def encode_v2(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    io: IOSpec,
    requested_outputs: Sequence[str] | None = None,
    binary_outputs: Iterable[str] = frozenset(),
) -> tuple[bytes, list[tuple[str, str]]]:
    """A V2 inference response: each output named, typed and shaped, JSON data row-major.

    Outputs in ``binary_outputs`` go as raw little-endian bytes after the JSON header (BYTES:
    4-byte length prefix per element); then the returned headers carry
    ``Inference-Header-Content-Length`` and the response should be sent as
    ``V2_BINARY_CONTENT_TYPE``.

    Returns:
        ``(body, extra_headers)``; ``extra_headers`` is empty for a pure JSON body.
    """
    names = list(requested_outputs) if requested_outputs else _output_order(io, outputs)
    binary_outputs = frozenset(binary_outputs)
    entries, blobs = [], []
    for name in names:
        try:
            arr = outputs[name]
        except KeyError as e:
            raise InternalError(f"The model produced no output '{name}'", field=name) from e
        if not isinstance(arr, np.ndarray):
            raise InternalError(f"Output '{name}' is not a tensor", field=name)
        datatype = _datatype_of(arr.dtype, name)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in binary_outputs:
            blob = _pack(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = str(model_version)
    if request_id:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, []
    return header + b"".join(blobs), [("Inference-Header-Content-Length", str(len(header)))]


def _output_order(io: IOSpec, outputs: Mapping[str, np.ndarray]) -> list[str]:
    ordered = [o.name for o in io.outputs if o.name in outputs]
    known = set(ordered)
    return ordered + [n for n in outputs if n not in known]


def _datatype_of(dtype: np.dtype, name: str) -> str:
    if dtype.kind in "OUS":
        return "BYTES"
    datatype = _KIND_SIZE_TO_V2.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise InternalError(f"Output '{name}' has dtype {dtype}, which V2 cannot carry", field=name)
    return datatype


def _json_data(arr: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [_text(v) for v in arr.reshape(-1).tolist()]
    flat = np.ascontiguousarray(arr).reshape(-1)
    return flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))


def _pack(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else _text(v).encode("utf-8")
            parts += (struct.pack("<I", len(b)), b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=V2_DTYPES[datatype]).tobytes()


def _text(v: Any) -> str:
    if type(v) is str:
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


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


def _cast(arr: np.ndarray, target: np.dtype, field: str, label: str | None = None) -> np.ndarray:
    """``arr.astype(target)`` refusing what would change values: fractions, overflow, non-0/1."""
    dtype = arr.dtype
    if dtype == target:
        return arr
    kind, tkind = dtype.kind, target.kind
    if tkind == "f":
        return arr.astype(target)
    label = label or f"input '{field}'"
    if tkind in "iu" and arr.size:
        if kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.trunc(arr))
            if bad.any():
                value = arr.reshape(-1)[np.argmax(bad.reshape(-1))]
                raise Unprocessable(
                    f"Incompatible input types for {label}: expected {target} (integer), "
                    f"got {_show(value.item())}",
                    field=field,
                )
        if kind in "fiu":
            info = np.iinfo(target)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                value = lo if lo < info.min else hi
                raise Unprocessable(
                    f"{label[0].upper()}{label[1:]} holds {_show(value.item())}, outside the "
                    f"range of {target}",
                    field=field,
                )
    elif tkind == "b" and kind != "b" and (kind not in "iu" or not np.isin(arr, (0, 1)).all()):
        raise Unprocessable(
            f"Incompatible input types for {label}: expected bool (true/false)", field=field
        )
    return arr.astype(target)


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


def _encode_columns(io: IOSpec, columns: dict, n_rows: int) -> dict:
    try:
        return io.encode_columns(columns, n_rows)
    except SchemaError as e:
        raise from_schema_error(e) from e


def _fit_rank(block: np.ndarray, binding: InputBinding) -> np.ndarray:
    return block.reshape(-1) if len(binding.shape) == 1 else block


# ====================================================================== MLflow encode, roles
def role_for(io: IOSpec, predict_method: Any = None) -> str:
    """The output role ``/invocations`` returns for ``params.predict_method``.

    Mirrors the pyfunc flavor: ``predict`` (default) -> the model's default role; ``predict_proba``
    -> probabilities; ``predict_values`` -> value.

    Raises:
        BadRequest: unknown ``predict_method``, or the model has no output for it.
    """
    roles = {o.role for o in io.outputs}
    if predict_method is None or predict_method == "predict":
        if io.default_role in roles:
            return io.default_role
        return LABEL if io.task == "classification" else io.outputs[0].role
    if type(predict_method) is not str or predict_method not in PREDICT_METHODS:
        raise BadRequest(
            f"predict_method must be one of {sorted(PREDICT_METHODS)}, got {_show(predict_method)}",
            field="predict_method",
        )
    role = PREDICT_METHODS[predict_method]
    if role not in roles:
        raise BadRequest(
            f"predict_method={predict_method!r}: this model has no '{role}' output; "
            f"available: {', '.join(sorted(roles))}",
            field="predict_method",
        )
    return role


def mlflow_prediction(io: IOSpec, role: str, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The array the pyfunc flavor returns for ``role``, from the session's outputs."""
    spec = io.output_for(role)
    result = np.asarray(outputs[spec.name])
    tail = tuple(spec.shape[1:])
    if result.ndim and result.shape[1:] != tail and all(isinstance(d, int) for d in tail):
        result = result.reshape((result.shape[0], *tail))
    if role == PROBABILITIES and io.extra.get("proba_column") is not None and result.ndim == 2:
        result = result[:, int(io.extra["proba_column"])]
    if role == LABEL and io.classes and all(isinstance(c, bool) for c in io.classes):
        result = result.astype(bool)
    return result


def encode_mlflow(outputs_for_role: np.ndarray) -> bytes:
    """``{"predictions": [...]}`` as ``mlflow models serve`` returns a numpy result."""
    arr = np.asarray(outputs_for_role)
    if arr.ndim and arr.dtype.kind in "fiub" and arr.dtype.isnative:
        return orjson.dumps(
            {"predictions": np.ascontiguousarray(arr)}, option=orjson.OPT_SERIALIZE_NUMPY
        )
    return orjson.dumps({"predictions": arr.tolist()}, default=_text)


# ====================================================================== helpers
def _loads(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadRequest(_json_error(data, e)) from e


def _json_error(data: bytes | memoryview, e: orjson.JSONDecodeError) -> str:
    if not bytes(data[:64]).strip():
        return "The body is empty: expected a JSON object"
    where = f"line {e.lineno} column {e.colno}"
    # e.pos counts characters, not bytes
    if str(bytes(data), "utf-8", "replace")[e.pos : e.pos + 3].lower() in ("nan", "inf"):
        return (
            f"Invalid JSON at {where}: NaN and Infinity are not JSON numbers (use null for a "
            "missing value, or send binary tensor data)"
        )
    if "depth" in e.msg or "recursion" in e.msg:
        return f"Invalid JSON at {where}: nested too deeply (the limit is 1024 levels)"
    if "end of data" in e.msg or "EOF" in e.msg:
        return f"Invalid JSON: the body ends too early ({where}); is it truncated?"
    return f"Invalid JSON at {where}: {e.msg}"


_DTYPES: dict[str, np.dtype] = {}
_LENGTH = struct.Struct("<I")


def _np(dtype: str) -> np.dtype:
    """``np.dtype(name)``, memoised: the hot path calls it per input."""
    found = _DTYPES.get(dtype)
    if found is None:
        found = _DTYPES[dtype] = np.dtype(dtype)
    return found


def _v2_of(dtype: str) -> str:
    if dtype == "string":
        return "BYTES"
    return _KIND_SIZE_TO_V2[np.dtype(dtype).kind, np.dtype(dtype).itemsize]


def _first_not(data: list, types: tuple, exclude: tuple = ()) -> Any:
    """The first leaf of nested lists not of ``types`` (or an int too big for 64 bits)."""
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if type(v) is list:
                stack.append(iter(v))
                break
            if not isinstance(v, types) or isinstance(v, exclude):
                return v
            if type(v) is int and not -(2**63) <= v < 2**64:
                return v
        else:
            stack.pop()
    return None


def _len(value: Any) -> int:
    return len(value) if type(value) is list else -1


def _kind(value: Any) -> str:
    names = {dict: "dictionary", list: "list", str: "string", type(None): "null"}
    return names.get(type(value), f"type {type(value).__name__}")


def _show(value: Any) -> str:
    """A client value in JSON notation, clipped: messages quote values, never whole payloads."""
    if type(value) in (list, dict) and len(value) > 8:
        return f"a {_kind(value)} of {len(value)} items"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # nested too deeply for orjson, or not JSON at all
        text = f"a {type(value).__name__}"
    return _clip(text, 40)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
