"""Refusals of input values the source model would refuse, shared by ``IOSpec`` (the pyfunc)
and the serving runtime's decoders: a missing value in a column whose source refuses them, an
infinite value, a category the source never saw in training (XGBoost). Each names the column and
what to do."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class SchemaError(ValueError):
    """Input does not match the spec. ``field`` names the column or input at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def missing_refused(column: str) -> SchemaError:
    """The one refusal of a missing value in a column whose source model refuses them."""
    return SchemaError(
        f"Column '{column}' contains missing values (NaN/None/null) and the source model refuses "
        f"them (it has no imputer or NaN handling for '{column}'); fill '{column}' before "
        "predicting",
        field=column,
    )


def infinite_refused(column: str, row: int, dtype: str) -> SchemaError:
    """The one refusal of an infinite value where the source model refuses them."""
    beyond = (
        " or one beyond float32's range (3.4e38), which the twin computes this column in,"
        if dtype == "float32"
        else ""
    )
    return SchemaError(
        f"Column '{column}' holds an infinite value{beyond} (row {row}); the source model "
        "refuses infinite values: send a finite number",
        field=column,
    )


def check_infinite(inputs, feed) -> None:
    """Refuse an infinite value in the float ``inputs`` (``InputBinding``s) of ``feed``; a
    value beyond float32's range is infinite once in a float32 input. One dot product per
    input when there is none (a sum of squares is finite).

    Raises:
        SchemaError: naming the first such column and row.
    """
    for binding in inputs:
        arr = feed.get(binding.name)
        if arr is None or not binding.dtype.startswith("float"):
            continue
        arr = np.asarray(arr)
        flat = arr.reshape(-1)
        if flat.dtype.kind != "f" or math.isfinite(flat.dot(flat)):
            continue
        table = np.isinf(arr).reshape(len(arr), -1)
        if not table.any():
            continue  # large values whose squares overflow, or NaN: not ours to refuse
        row, j = (int(k) for k in np.argwhere(table)[0])
        column = binding.columns[j] if j < len(binding.columns) else binding.name
        raise infinite_refused(column, row, binding.dtype)


def has_missing(arr: np.ndarray) -> bool:
    """None or a float NaN in an object array (pandas' two missing markers)."""
    return any(v is None or (type(v) is float and v != v) for v in arr.tolist())


def check_categories(column: str, values: Any, known: frozenset) -> None:
    """Refuse the first value of ``values`` (one column) that is not a training category;
    missing values (None, NaN) are not categories and pass (``check_missing`` rules on them)."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    try:
        if set(arr.tolist()) <= known:  # the common case: one set operation, no per-row work
            return
    except TypeError:  # an unhashable value: the loop below names it
        pass
    for value in arr.tolist():
        if value is None or (isinstance(value, float) and value != value):
            continue
        if (value if type(value) is str else str(value)) not in known:
            raise unseen_category_refused(column, value, known)


def unseen_category_refused(column: str, value: Any, known: frozenset) -> SchemaError:
    """The one refusal of a category the source model never saw in training."""
    shown = sorted(known)
    listed = ", ".join(repr(v) for v in shown[:10]) + (", ..." if len(shown) > 10 else "")
    text = str(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return SchemaError(
        f"Column '{column}' holds the category {text!r}, which the source model never saw in "
        f"training and refuses (XGBoost: 'not in the training set', scikit-learn encoders with "
        f"handle_unknown='error': 'Found unknown categories'); known categories: {listed}. "
        "Map it to one of them before predicting",
        field=column,
    )
