"""scikit-learn encoders that refuse a category they never saw (``handle_unknown="error"``, the
default of ``OneHotEncoder`` and ``OrdinalEncoder``): the source raises "Found unknown
categories", skl2onnx's graph answers (all zeros, or a default code). The twin records those
columns' training categories so the pyfunc and the runtime refuse such a value naming the
column, as for XGBoost (``categorical.py``, ``IOSpec.refused_categories``)."""

from __future__ import annotations

import logging
from typing import Any

from mlflow_deploy_plugins.onnx.converters import categorical

_logger = logging.getLogger(__name__)

_ENCODERS = ("OneHotEncoder", "OrdinalEncoder")


def refusing_encoders_extra(selector: Any, inputs) -> dict:
    """``IOSpec.extra`` entries (``categories``, ``unseen_categories="refuse"``) for the string
    columns the ColumnTransformer ``selector`` (None: none) hands by name to an encoder that
    refuses unseen categories; ``{}`` when there is none."""
    strings = {c for b in inputs if b.dtype == "string" for c in b.columns}
    if selector is None or not strings:
        return {}
    found: dict[str, list] = {}
    for _, transformer, columns in getattr(selector, "transformers_", ()):
        encoder = _refusing_encoder(transformer)
        if encoder is None or not isinstance(columns, list):
            continue
        for column, values in zip(columns, encoder.categories_, strict=False):
            if isinstance(column, str) and column in strings:
                found[column] = [str(v) for v in values.tolist() if not _missing(v)]
    if not found:
        return {}
    _logger.info("Unseen categories are refused in %s (handle_unknown='error')", sorted(found))
    return categorical.io_extra(found, categorical.UNSEEN_IS_REFUSED)


def _refusing_encoder(transformer: Any) -> Any:
    """The encoder with ``handle_unknown="error"`` that ``transformer`` is or starts with."""
    steps = getattr(transformer, "steps", None)
    if steps:
        return _refusing_encoder(steps[0][1])
    if (
        type(transformer).__name__ in _ENCODERS
        and type(transformer).__module__.startswith("sklearn.")
        and getattr(transformer, "handle_unknown", None) == "error"
    ):
        return transformer
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def imputed_columns(selector: Any) -> set[str]:
    """Columns the ColumnTransformer ``selector`` (None: none) hands by name to a SimpleImputer
    (or a Pipeline starting with one): its converter takes float inputs only, so an integer
    column there enters the graph as float64 (exact below 2**53), as scikit-learn imputes it."""
    found: set[str] = set()
    for _, transformer, columns in getattr(selector, "transformers_", ()):
        first = transformer
        while getattr(first, "steps", None):
            first = first.steps[0][1]
        if type(first).__name__ == "SimpleImputer" and isinstance(columns, list):
            found.update(c for c in columns if isinstance(c, str))
    return found
