"""The contract between a table of named columns and an ONNX graph's inputs and outputs.

Numpy only: the same spec drives the MLflow pyfunc (pandas in, via ``encode_columns``) and the
serving runtime (JSON in), and is stored in the MLmodel flavor block and the bundle manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from mlflow_deploy_plugins.core.refusals import (  # SchemaError: re-exported, its home for callers
    SchemaError,
    check_categories,
    check_infinite,
    has_missing,
    missing_refused,
)

SCHEMA_VERSION = 1

#: Roles an output can play; the pyfunc's ``predict_method`` picks one.
LABEL, PROBABILITIES, VALUE = "label", "probabilities", "value"
ROLES = (LABEL, PROBABILITIES, VALUE)
#: ``predict_method`` values (pyfunc ``params`` and ``/invocations``) -> output role; ``None``
#: means what the source model's pyfunc returned (``IOSpec.default_role``).
PREDICT_METHODS = {
    "predict": None,
    "predict_label": LABEL,
    "predict_proba": PROBABILITIES,
    "predict_values": VALUE,
}

#: Element types we bind; ``string`` is an object array of ``str`` on the numpy side.
_NUMPY = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
    "string": object,
}
ONNX_TO_DTYPE = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


@dataclass(frozen=True)
class InputBinding:
    """One ONNX input fed by one or more table columns (stacked in order along axis 1)."""

    name: str
    columns: tuple[str, ...]
    dtype: str
    shape: tuple[int | None, ...] = (None, 1)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str
    role: str = VALUE
    shape: tuple[int | None, ...] = (None,)
    #: numpy dtype the SOURCE returned for this output (e.g. "int64", "float64", "object");
    #: ``None`` for twins built before it was recorded (values are returned as the graph gives).
    source_dtype: str | None = None


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[InputBinding, ...]
    outputs: tuple[OutputSpec, ...]
    task: str = "regression"  # classification | regression | other
    classes: tuple[Any, ...] | None = None
    default_role: str = VALUE
    extra: dict = field(default_factory=dict)
    #: Columns whose missing values (NaN, None, null) the source model accepts, probed at
    #: conversion time. Every other column refuses them: a twin built before this was recorded
    #: refuses missing values everywhere (refusing is right wherever the source would refuse).
    accepts_missing: tuple[str, ...] = ()
    #: Whether the source answers infinite values, probed at conversion time (a twin built
    #: before this was recorded refuses them, as scikit-learn and XGBoost do).
    accepts_infinite: bool = False

    # ------------------------------------------------------------------ introspection
    @cached_property
    def refused_categories(self) -> dict[str, frozenset]:
        """``column -> training categories`` for the categorical columns whose source refuses a
        category it never saw (``extra["unseen_categories"] == "refuse"``: XGBoost); ``{}``
        otherwise (no categories, or LightGBM, which reads an unseen one as missing)."""
        if self.extra.get("unseen_categories") != "refuse":
            return {}
        found = self.extra.get("categories") or {}
        return {c: frozenset(str(v) for v in values) for c, values in found.items()}

    @property
    def columns(self) -> list[str]:
        return [c for b in self.inputs for c in b.columns]

    def column_dtypes(self) -> dict[str, str]:
        return {c: b.dtype for b in self.inputs for c in b.columns}

    def output_for(self, role: str) -> OutputSpec:
        for out in self.outputs:
            if out.role == role:
                return out
        available = sorted({o.role for o in self.outputs})
        raise SchemaError(
            f"This model has no '{role}' output; available: {', '.join(available)}", field=role
        )

    def role_for(self, predict_method: str | None = None) -> str:
        """The output role a ``predict_method`` asks for (one place for the pyfunc and server).

        Raises:
            SchemaError: unknown ``predict_method``, or the model has no output for it
                (``field="predict_method"``).
        """
        roles = {o.role for o in self.outputs}
        if predict_method is None or predict_method == "predict":
            if self.default_role in roles:
                return self.default_role
            return LABEL if self.task == "classification" else self.outputs[0].role
        if predict_method not in PREDICT_METHODS:
            raise SchemaError(
                f"predict_method must be one of {sorted(PREDICT_METHODS)}, got {predict_method!r}",
                field="predict_method",
            )
        role = PREDICT_METHODS[predict_method]
        if role not in roles:
            raise SchemaError(
                f"predict_method={predict_method!r}: this model has no '{role}' output; "
                f"available: {', '.join(sorted(roles))}",
                field="predict_method",
            )
        return role

    @staticmethod
    def shaped(out: OutputSpec, arr: np.ndarray) -> np.ndarray:
        """``arr`` as ``[rows, *declared tail]`` when it holds the same values in another shape
        (e.g. a regressor's ``[N, 1]`` graph output declared ``[N]``); otherwise unchanged."""
        arr = np.asarray(arr)
        tail = tuple(out.shape[1:])
        if not arr.ndim or arr.shape[1:] == tail or not all(type(d) is int for d in tail):
            return arr
        if arr.size != arr.shape[0] * int(np.prod(tail, dtype=np.int64)):
            return arr
        return arr.reshape((arr.shape[0], *tail))

    def as_source(self, out: OutputSpec, arr: np.ndarray) -> np.ndarray:
        """An ONNX output reshaped (and typed) like the source model returned it."""
        arr = self.shaped(out, arr)
        column = self.extra.get("proba_column")
        if out.role == PROBABILITIES and column is not None and arr.ndim == 2:
            arr = arr[:, int(column)]  # a converter may record the one column the source returned
        if out.role == LABEL and self._bool_labels:
            arr = arr.astype(bool)
        return _as_dtype(arr, out.source_dtype)

    @cached_property
    def _bool_labels(self) -> bool:
        """The classes are booleans (once per spec: ``as_source`` runs per response)."""
        return bool(self.classes) and all(isinstance(c, bool) for c in self.classes)

    # ------------------------------------------------------------------ encoding
    def encode_columns(self, data: Mapping[str, Any], n_rows: int | None = None) -> dict:
        """Build the ONNX feed from a mapping ``column -> 1-D values``.

        Raises:
            SchemaError: a column is missing, has the wrong length, or holds values that do not
                convert to the expected type. The message names the column.
        """
        missing = [c for c in self.columns if c not in data]
        if missing:
            raise SchemaError(
                f"Missing column(s) {missing}; the model expects {self.columns}", field=missing[0]
            )
        for column, known in self.refused_categories.items():
            check_categories(column, data[column], known)
        feed = {}
        for binding in self.inputs:
            arrays = [
                _column_array(data[c], c, binding.dtype, n_rows, c in self.accepts_missing)
                for c in binding.columns
            ]
            lengths = {len(a) for a in arrays}
            if len(lengths) > 1:
                raise SchemaError(
                    f"Columns of input '{binding.name}' have different lengths {sorted(lengths)}",
                    field=binding.name,
                )
            if len(arrays) == 1:  # a view, not np.stack's copy; C order as np.stack gives
                stacked = np.ascontiguousarray(arrays[0]).reshape(-1, 1)
            else:
                stacked = np.stack(arrays, axis=1) if arrays else np.empty((0, 0))
            feed[binding.name] = _fit_rank(stacked, binding)
        self.check_infinite(feed)
        return feed

    def encode_matrix(self, matrix: np.ndarray) -> dict:
        """Build the feed from a 2-D array whose columns follow ``self.columns``."""
        matrix = np.asarray(matrix)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
            raise SchemaError(
                f"Expected a 2-D array with {len(self.columns)} columns {self.columns}, "
                f"got shape {matrix.shape}",
                field="input",
            )
        if len(self.inputs) == 1 and self.inputs[0].dtype != "string":
            binding = self.inputs[0]
            try:
                feed = {binding.name: _fit_rank(matrix.astype(_NUMPY[binding.dtype]), binding)}
            except (TypeError, ValueError) as e:
                raise SchemaError(
                    f"Input '{binding.name}' must be {binding.dtype}: {e}", field=binding.name
                ) from e
            self.check_missing(feed)
            self.check_infinite(feed)
            return feed
        return self.encode_columns({c: matrix[:, i] for i, c in enumerate(self.columns)})

    def check_missing(self, feed: Mapping[str, np.ndarray], strings: bool = False) -> None:
        """Refuse NaN in a float input column whose source refuses missing values.

        For feeds built without ``encode_columns`` (a matrix, the runtime's fast decoders):
        ``encode_columns`` checks each column as it converts it. ``strings=True`` also looks for
        None in string inputs (a feed handed over as is; the runtime's decoders take only str).

        Raises:
            SchemaError: naming the first such column.
        """
        for binding in self.inputs:
            if not (binding.dtype.startswith("float") or strings and binding.dtype == "string"):
                continue
            if all(c in self.accepts_missing for c in binding.columns):
                continue
            arr = feed.get(binding.name)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.dtype.kind == "f":
                if not np.isnan(np.sum(arr)):  # one pass, no mask unless NaN
                    continue
                nan_columns = np.isnan(arr).reshape(len(arr), -1).any(axis=0)
            elif arr.dtype.kind == "O":  # None in a feed handed over as is
                table = arr.reshape(len(arr), -1)
                nan_columns = [has_missing(table[:, j]) for j in range(table.shape[1])]
            else:
                continue
            for column, has_nan in zip(binding.columns, nan_columns, strict=False):
                if has_nan and column not in self.accepts_missing:
                    raise missing_refused(column)

    def check_infinite(self, feed: Mapping[str, np.ndarray]) -> None:
        """Refuse an infinite value in a float input unless ``accepts_infinite`` (a
        SchemaError naming the column and row; ``refusals.check_infinite``)."""
        if not self.accepts_infinite:
            check_infinite(self.inputs, feed)

    def check_unseen(self, feed: Mapping[str, np.ndarray]) -> None:
        """Refuse a category the source never saw in a column where the source refuses them
        (``refused_categories``), for feeds built without ``encode_columns`` (which checks each
        column before converting it). Missing values are left to ``check_missing``.

        Raises:
            SchemaError: naming the column and the value.
        """
        if not self.refused_categories:
            return
        for binding in self.inputs:
            arr = feed.get(binding.name)
            if arr is None or not set(binding.columns) & self.refused_categories.keys():
                continue
            table = np.asarray(arr, dtype=object).reshape(len(arr), -1)
            for j, column in enumerate(binding.columns):
                known = self.refused_categories.get(column)
                if known is not None and j < table.shape[1]:
                    check_categories(column, table[:, j], known)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        d["classes"] = None if self.classes is None else [_plain(c) for c in self.classes]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IOSpec:
        return cls(
            inputs=tuple(
                InputBinding(
                    name=i["name"],
                    columns=tuple(i["columns"]),
                    dtype=i["dtype"],
                    shape=tuple(i.get("shape") or (None, 1)),
                )
                for i in d["inputs"]
            ),
            outputs=tuple(
                OutputSpec(
                    name=o["name"],
                    dtype=o["dtype"],
                    role=o.get("role", VALUE),
                    shape=tuple(o.get("shape") or (None,)),
                    source_dtype=o.get("source_dtype"),
                )
                for o in d["outputs"]
            ),
            task=d.get("task", "regression"),
            classes=None if d.get("classes") is None else tuple(d["classes"]),
            default_role=d.get("default_role", VALUE),
            extra=dict(d.get("extra") or {}),
            accepts_missing=tuple(d.get("accepts_missing") or ()),
            accepts_infinite=bool(d.get("accepts_infinite", False)),
        )


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, for JSON/YAML."""
    return value.item() if isinstance(value, np.generic) else value


_NP_DTYPES: dict[str, np.dtype] = {}


def _as_dtype(arr: np.ndarray, dtype: str | None) -> np.ndarray:
    """``arr`` with the numpy dtype the source returned. onnxruntime's int64 is ``longlong``
    (char 'q'), which ``select_dtypes("int64")`` and Spark's ``long`` do not take for ``int64``."""
    if dtype is None or arr.dtype.kind == "O" or dtype == "object":
        return arr
    target = _NP_DTYPES.get(dtype)
    if target is None:  # memoised: the serving runtime calls this per response
        target = _NP_DTYPES[dtype] = np.dtype(dtype)
    if arr.dtype == target and arr.dtype.char != target.char:
        return arr.view(target)
    if arr.dtype.kind == target.kind == "f" or arr.dtype.kind in "iub" and target.kind in "iuf":
        return arr.astype(target, copy=False)
    return arr


def _column_array(
    values: Any, column: str, dtype: str, n_rows: int | None, missing_ok: bool = False
) -> np.ndarray:
    # Texts as objects: numpy's str dtype would drop trailing NULs
    arr = np.asarray(values, dtype=object if dtype == "string" and type(values) is list else None)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        else:
            raise SchemaError(f"Column '{column}' must be 1-D, got shape {arr.shape}", field=column)
    if n_rows is not None and len(arr) != n_rows:
        raise SchemaError(f"Column '{column}' has {len(arr)} rows, expected {n_rows}", field=column)
    if dtype == "string":
        if arr.dtype.kind in "fc" and len(arr) and np.isnan(arr.astype(float)).any():
            if not missing_ok:
                raise missing_refused(column)
            return np.where(np.isnan(arr.astype(float)), None, arr).astype(str).astype(object)
        if arr.dtype.kind == "O" and _plain_strings(arr):
            return arr  # what the round trip below would give back
        if arr.dtype.kind == "O" and has_missing(arr):
            if not missing_ok:
                raise missing_refused(column)
            # None and NaN reach the graph as one text, the one the gate's missing rows use
            arr = arr.copy()
            arr[[type(v) is float and v != v for v in arr.tolist()]] = None
        return _as_text(arr)
    target = _NUMPY[dtype]
    if arr.dtype.kind in "OUS":
        if arr.dtype.kind == "O" and has_missing(arr) and (not missing_ok or dtype[0] != "f"):
            raise missing_refused(column)
        try:
            converted = arr.astype(target)
        except (TypeError, ValueError) as e:
            bad = _first_bad(arr, target)
            raise SchemaError(
                f"Column '{column}' must be {dtype} (numeric), got a non-numeric value {bad!r}",
                field=column,
            ) from e
    else:
        if arr.dtype.kind == "f" and not (missing_ok and dtype[0] == "f") and np.isnan(np.sum(arr)):
            raise missing_refused(column)
        converted = arr.astype(target, copy=False)
    return converted


def _plain_strings(arr: np.ndarray) -> bool:
    """Every element a ``str`` (not a subclass): ``_as_text`` would return equal strings."""
    return all(type(v) is str for v in arr.tolist())


def _as_text(arr: np.ndarray) -> np.ndarray:
    """``str()`` of each value (None -> "None", as the gate's missing rows), keeping trailing NULs
    that numpy's str dtype drops ("a\\x00" is an unknown category to the source, not "a")."""
    out = np.empty(len(arr), dtype=object)
    out[:] = [v if type(v) is str else str(v) for v in arr.tolist()]
    return out


def _first_bad(arr: np.ndarray, target: Any) -> Any:
    for v in arr:
        try:
            np.asarray([v]).astype(target)
        except (TypeError, ValueError):
            return v
    return None


def _fit_rank(stacked: np.ndarray, binding: InputBinding) -> np.ndarray:
    """Match the graph's declared rank: (n,) for 1-D inputs, (n, k) otherwise."""
    if len(binding.shape) == 1:
        return stacked.reshape(-1)
    width = binding.shape[1] if len(binding.shape) > 1 else None
    if isinstance(width, int) and stacked.shape[1] != width:
        raise SchemaError(
            f"Input '{binding.name}' expects {width} column(s), got {stacked.shape[1]}",
            field=binding.name,
        )
    return stacked


def spec_inputs_from_columns(
    columns: Sequence[str], dtypes: Sequence[str], per_column: bool, name: str = "X"
) -> tuple[InputBinding, ...]:
    """Bindings for a table: one input per column, or one matrix input for all of them."""
    if per_column:
        return tuple(
            InputBinding(name=_safe_name(c), columns=(c,), dtype=d, shape=(None, 1))
            for c, d in zip(columns, dtypes, strict=False)
        )
    dtype = dtypes[0] if dtypes else "float32"
    return (
        InputBinding(name=name, columns=tuple(columns), dtype=dtype, shape=(None, len(columns))),
    )


def _safe_name(column: str) -> str:
    return str(column)
