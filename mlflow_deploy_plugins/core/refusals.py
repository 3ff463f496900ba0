"""Refusals of input values the source model would refuse, shared by ``IOSpec`` (the pyfunc)
and the serving runtime's decoders: a missing value in a column whose source refuses them, a
category the source never saw in training (XGBoost). Each names the column and what to do."""

from __future__ import annotations

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
