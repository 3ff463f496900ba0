"""What both protocols' codecs share: limits, dtype tables, decoded requests, per-IOSpec
decode plans, JSON loading, value conversions and error-message helpers."""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import (
    InputBinding,
    IOSpec,
    SchemaError,
)
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    Unprocessable,
    from_schema_error,
)

# ====================================================================== limits and dtype tables
#: Most tensor elements one request may carry (all inputs together), checked before allocating.
DEFAULT_MAX_ELEMENTS = 1 << 24

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


# ====================================================================== decode plans
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


# ====================================================================== conversions
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


def _text(v: Any) -> str:
    if type(v) is str:
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


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


def _encode_columns(io: IOSpec, columns: dict, n_rows: int) -> dict:
    try:
        return io.encode_columns(columns, n_rows)
    except SchemaError as e:
        raise from_schema_error(e) from e


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
