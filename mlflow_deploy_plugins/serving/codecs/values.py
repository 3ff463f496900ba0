"""Value conversions and messages both protocols' codecs share: JSON loading, strings, exact casts,
shape checks, and quoting client values in error messages (clipped)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from math import isfinite
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import InputBinding, IOSpec, SchemaError
from mlflow_deploy_plugins.serving.codecs.base import Plan
from mlflow_deploy_plugins.serving.errors import BadRequest, Unprocessable, from_schema_error

_logger = logging.getLogger(__name__)


def loads_json(data: bytes | memoryview) -> Any:
    """``orjson.loads``; invalid JSON is a BadRequest saying where and, for the usual
    mistakes (NaN, truncation, nesting), why. A UTF-8 byte order mark is skipped, as Python's
    ``json.loads`` of bytes (MLflow's scoring server) does; only a failed parse looks for it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if data[:3] == b"\xef\xbb\xbf":
            return loads_json(data[3:])
        raise BadRequest(_json_error(data, e)) from e


def loads_json_tokens(data: bytes | memoryview) -> Any:
    """``loads_json`` that also reads ``NaN``, ``Infinity`` and ``-Infinity``, as Python's
    ``json`` (MLflow's scoring server) and TF Serving's parser do: orjson first, Python's parser
    only when orjson refuses the body."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError):
        return loads_json(data)  # raises the BadRequest that says where and why


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


def string_array(values: Sequence) -> np.ndarray:
    """A 1-D object array of ``values`` (filled, not ``np.array``: that would make a str dtype, or
    a 2-D array from sequences)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def json_strings(data: Any, name: str, label: str | None = None) -> np.ndarray:
    """JSON strings (nested lists allowed) -> object array; anything else is refused."""
    label = label or f"Input '{name}'"
    try:
        arr = np.array(data, dtype=object)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{label}: 'data' must be a list of strings", field=name) from e
    for v in arr.reshape(-1):
        if type(v) is not str:
            raise Unprocessable(f"{label} holds strings (BYTES); got {show(v)}", field=name)
    return arr


def fit_shape(
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


def cast_exact(
    arr: np.ndarray, target: np.dtype, field: str, label: str | None = None
) -> np.ndarray:
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
                    f"got {show(value.item())}",
                    field=field,
                )
        if kind in "fiu":
            info = np.iinfo(target)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                value = lo if lo < info.min else hi
                raise Unprocessable(
                    f"{label[0].upper()}{label[1:]} holds {show(value.item())}, outside the "
                    f"range of {target}",
                    field=field,
                )
    elif tkind == "b" and kind != "b" and (kind not in "iu" or not np.isin(arr, (0, 1)).all()):
        raise Unprocessable(
            f"Incompatible input types for {label}: expected bool (true/false)", field=field
        )
    return arr.astype(target)


def encode_columns(io: IOSpec, columns: dict, n_rows: int) -> dict:
    """``IOSpec.encode_columns``, its SchemaError turned into a 422 naming the column."""
    try:
        return io.encode_columns(columns, n_rows)
    except SchemaError as e:
        raise from_schema_error(e) from e


def refuse_missing(plan: Plan, feed: dict) -> dict:
    """``feed`` when it holds no value its source refuses: a missing value in a column whose
    source refuses them, an infinite value where the source refuses those, a category the
    source never saw (XGBoost); else a 422 naming the column (and the value). The plan says
    beforehand whether there is anything to look at."""
    try:
        for name in plan.checks_floats:
            # One cheap pass first (per request): a sum of squares is finite unless some value
            # is NaN or infinite (or beyond the square root of the float range); only then the
            # passes that name it.
            flat = feed[name].reshape(-1)
            total = flat.dot(flat)
            if not isfinite(total):
                plan.io.check_missing(feed)
                plan.io.check_infinite(feed)
                break
        if plan.refuses_unseen:
            plan.io.check_unseen(feed)
    except SchemaError as e:
        raise from_schema_error(e) from e
    return feed


def as_text(v: Any) -> str:
    """A value as text for a response (bytes decoded as UTF-8, others ``str()``)."""
    if type(v) is str:
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def has_bool(data: list) -> bool:
    """Whether (nested) lists of numbers hold a boolean, which ``np.asarray`` would quietly read
    as 1.0 or 0.0 among numbers: orjson writes the values back (C speed) and only booleans
    write a ``t`` or ``f`` (numbers are digits, ``.``, ``-``, ``e``; NaN becomes null)."""
    try:
        text = orjson.dumps(data)
    except TypeError:  # an int beyond 64 bits: look value by value
        return first_not(data, (int, float), exclude=(bool,)) is not None
    return b"t" in text or b"f" in text


def first_not(data: list, types: tuple, exclude: tuple = ()) -> Any:
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


def list_len(value: Any) -> int:
    """``len`` of a JSON list, -1 for anything else."""
    return len(value) if type(value) is list else -1


def kind_of(value: Any) -> str:
    """A JSON value's kind in words, for messages (``"dictionary"``, ``"null"``...)."""
    names = {dict: "dictionary", list: "list", str: "string", type(None): "null"}
    return names.get(type(value), f"type {type(value).__name__}")


def show(value: Any) -> str:
    """A client value in JSON notation, clipped: messages quote values, never whole payloads."""
    if type(value) in (list, dict) and len(value) > 8:
        return f"a {kind_of(value)} of {len(value)} items"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # nested too deeply for orjson, or not JSON at all
        text = f"a {type(value).__name__}"
    return clip(text, 40)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
