"""Open Inference Protocol V2: request decoding (JSON, binary tensor extension, per-column fast
path) and response encoding."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from math import prod
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs._common import (
    _FLOATS,
    _INTS,
    _KIND_SIZE_TO_V2,
    _NUMERIC,
    DEFAULT_MAX_ELEMENTS,
    V2_DTYPES,
    DecodedRequest,
    _cast,
    _clip,
    _encode_columns,
    _first_not,
    _fit_shape,
    _json_strings,
    _loads,
    _np,
    _Plan,
    _plan,
    _show,
    _text,
    _v2_of,
    columns_from_feed,
)
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    InternalError,
    PayloadTooLarge,
    Unprocessable,
)

#: Most dimensions a V2 input may declare.
MAX_RANK = 16

HEADER_LENGTH = "inference-header-content-length"

#: Content type of a V2 response that carries binary tensor data (``encode_v2`` returned headers).
V2_BINARY_CONTENT_TYPE = "application/octet-stream"


# ====================================================================== decoded requests
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


# ====================================================================== V2 decode
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


# ====================================================================== helpers
_LENGTH = struct.Struct("<I")
