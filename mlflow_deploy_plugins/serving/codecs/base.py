"""What both protocols' decoders share: the element limit, V2 dtype tables, decoded requests
and the per-IOSpec decode plans."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from operator import itemgetter

import numpy as np

from mlflow_deploy_plugins.core.constants import NAMED_COLUMNS, POSITIONAL_COLUMNS
from mlflow_deploy_plugins.core.iospec import IOSpec

_logger = logging.getLogger(__name__)

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

#: ``(numpy kind, itemsize)`` -> V2 datatype, for encoding outputs and naming wire types.
KIND_SIZE_TO_V2 = {
    (dt.kind, dt.itemsize): name for name, dt in V2_DTYPES.items() if name != "BYTES"
}

#: V2 datatypes by family: which ones a column of a given dtype accepts.
INT_DATATYPES = frozenset(n for n in V2_DTYPES if n.startswith(("INT", "UINT")))
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
NUMERIC_DATATYPES = INT_DATATYPES | FLOAT_DATATYPES

_DTYPES: dict[str, np.dtype] = {}


def np_dtype(dtype: str) -> np.dtype:
    """``np.dtype(name)``, memoised: the hot path calls it per input."""
    found = _DTYPES.get(dtype)
    if found is None:
        found = _DTYPES[dtype] = np.dtype(dtype)
    return found


def v2_datatype(dtype: str) -> str:
    """The V2 datatype of an IOSpec dtype name (``"float32"`` -> ``"FP32"``)."""
    if dtype == "string":
        return "BYTES"
    return KIND_SIZE_TO_V2[np.dtype(dtype).kind, np.dtype(dtype).itemsize]


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


class Plan:
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
        "positional",
        "named",
        "refuses_missing",
        "checks_floats",
        "refuses_unseen",
    )

    def __init__(self, io: IOSpec):
        self.io = io
        self.bindings = {b.name: b for b in io.inputs}
        self.dtypes = io.column_dtypes()
        self.tensor_names = frozenset(self.bindings)
        #: One input per column under the column's own name: no separate tensor form.
        self.same = self.tensor_names == frozenset(self.dtypes)
        self.wire = {b.name: v2_datatype(b.dtype) for b in io.inputs}
        #: Declared non-batch dims per input, when all are fixed (else None: checked one by one).
        self.tails = {
            b.name: tuple(b.shape[1:]) if all(type(d) is int for d in b.shape[1:]) else None
            for b in io.inputs
        }
        self.outputs = [o.name for o in io.outputs]
        self.columns = io.columns
        #: A tensor-signature source: callers' column labels are ignored, columns go by position.
        self.positional = bool(io.extra.get(POSITIONAL_COLUMNS))
        #: A source whose signature names its columns: no rows of bare values on /invocations.
        self.named = bool(io.extra.get(NAMED_COLUMNS)) and len(io.columns) > 1
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
        #: One V2 input per column (``v2_columns_fast``): blocks of column positions.
        self.column_blocks = _column_blocks(io, self.positions)
        self.column_names = tuple(self.columns)
        self.string_positions = frozenset(
            self.positions[c] for b in io.inputs if b.dtype == "string" for c in b.columns
        )
        #: What ``refuse_missing`` looks at (nothing at all for most models): a float input
        #: with a column whose source refuses missing values; a column whose source refuses
        #: categories it never saw (XGBoost).
        #: The float inputs to look at, by name.
        self.refuses_missing = tuple(
            b.name
            for b in io.inputs
            if b.dtype.startswith("float") and not all(c in io.accepts_missing for c in b.columns)
        )
        #: The float inputs whose values are looked at: those above, and every float input
        #: when the source refuses infinite values (``IOSpec.accepts_infinite``).
        self.checks_floats = tuple(
            b.name
            for b in io.inputs
            if b.name in self.refuses_missing
            or (b.dtype.startswith("float") and not io.accepts_infinite)
        )
        self.refuses_unseen = bool(io.refused_categories)


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
            blocks.append((b.name, index, np_dtype(b.dtype), len(b.shape) == 1))
        else:
            return None
    return blocks


_PLANS: dict[int, Plan] = {}


def plan_for(io: IOSpec) -> Plan:
    """The decode plan of ``io``, built on first use (a bounded cache keyed by the spec)."""
    plan = _PLANS.get(id(io))
    if plan is None or plan.io is not io:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        plan = _PLANS[id(io)] = Plan(io)
    return plan
