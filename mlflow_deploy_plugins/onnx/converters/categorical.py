"""Categorical columns of LightGBM / XGBoost models trained on pandas ``category`` columns.

onnxmltools converts the trees of such a model when fed the category CODES. The twin instead
takes the category values (strings, one input per column) and maps them to the codes of the
training categories inside the graph (a LabelEncoder per column, in front of the trees), so
callers send what they sent the source. A value the model never saw is treated exactly like the
source does:

* LightGBM re-codes a frame with its training categories (``set_categories``): an unseen value
  becomes NaN, i.e. missing. The twin maps it to NaN.
* XGBoost (>= 3.1 re-codes by name) refuses a frame holding a category it never saw ("Found a
  category not in the training set"); xgboost 3.2 misses the check for values sorting before
  every training category and answers as if they were the first one (measured). The twin
  records ``IOSpec.extra["unseen_categories"] = "refuse"`` with the known categories
  (``extra["categories"]``) so the pyfunc and the runtime refuse such a value naming the column;
  the graph alone maps it to NaN (missing), never to a made-up category.

``IOSpec.extra``: ``categories`` = {column: [training categories]}, ``unseen_categories`` =
``"missing"`` (LightGBM) or ``"refuse"`` (XGBoost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import InputBinding, spec_inputs_from_columns
from mlflow_deploy_plugins.errors import InvalidInputError

#: what the source does with a category it never saw (``IOSpec.extra["unseen_categories"]``)
UNSEEN_IS_MISSING, UNSEEN_IS_REFUSED = "missing", "refuse"
#: the onnxmltools graph's matrix input once the encoder feeds it
_CODES_INPUT = "category_codes"


def table_inputs(
    columns: Sequence[str], categories: Mapping[str, Sequence], sample: pd.DataFrame, what: str
) -> tuple[InputBinding, ...]:
    """One input per column: ``string`` for categorical columns, ``float32`` for the others."""
    missing = [c for c in columns if c not in sample.columns]
    if missing:
        raise InvalidInputError(
            f"The sample is missing column(s) {missing} that {what} was fitted on ({list(columns)})"
        )
    dtypes = ["string" if c in categories else "float32" for c in columns]
    return spec_inputs_from_columns(list(columns), dtypes, per_column=True)


def native_frame(sample: pd.DataFrame, columns: Sequence[str], categories: Mapping) -> pd.DataFrame:
    """The frame the source is given: categorical columns as pandas ``category`` with the
    training categories, then any value the model never saw (so the source itself decides what
    it means); a missing value (None, NaN) stays missing. A column of missing values only thus
    keeps the training categories, as a caller's column would (xgboost 3.2 fails on a
    ``category`` column without categories: the probe would read that as a refusal)."""
    frame = sample[list(columns)].copy()
    for column, known in categories.items():
        values = frame[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            continue
        present = pd.unique(values[values.notna()].astype(str))
        unseen = [v for v in present if v not in set(map(str, known))]
        frame[column] = pd.Categorical(
            values.where(values.isna(), values.astype(str)), categories=[*known, *unseen]
        )
    return frame


def prepend_encoder(
    model: onnx.ModelProto,
    graph_input: str,
    columns: Sequence[str],
    categories: Mapping[str, Sequence],
) -> None:
    """Replace the matrix input ``graph_input`` by one input per column and the encoding, in place."""
    from onnx import TensorProto, helper

    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == graph_input:
                node.input[i] = _CODES_INPUT
    del graph.input[:]
    nodes, pieces = [], []
    for column in columns:
        if column in categories:
            graph.input.append(helper.make_tensor_value_info(column, TensorProto.STRING, [None, 1]))
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [column],
                    [f"{column}_code"],
                    domain="ai.onnx.ml",
                    keys_strings=[str(c) for c in categories[column]],
                    values_floats=[float(i) for i in range(len(categories[column]))],
                    default_float=float("nan"),
                    name=f"{column}_LabelEncoder",
                )
            )
        else:
            graph.input.append(helper.make_tensor_value_info(column, TensorProto.FLOAT, [None, 1]))
            nodes.append(helper.make_node("Identity", [column], [f"{column}_code"]))
        pieces.append(f"{column}_code")
    nodes.append(helper.make_node("Concat", pieces, [_CODES_INPUT], axis=1, name="CodesConcat"))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    if not any(o.domain == "ai.onnx.ml" and o.version >= 2 for o in model.opset_import):
        for o in model.opset_import:
            if o.domain == "ai.onnx.ml":
                o.version = max(o.version, 2)


def io_extra(categories: Mapping[str, Sequence], unseen: str) -> dict:
    """What the IOSpec records so the pyfunc and the runtime can enforce ``unseen``."""
    return {
        "categories": {c: [str(v) for v in values] for c, values in categories.items()},
        "unseen_categories": unseen,
    }


def categories_or_refuse(found: Mapping[str, Sequence], what: str) -> dict[str, list]:
    """Plain lists of the training categories; refuses non-string-like categories."""
    out = {}
    for column, values in found.items():
        values = list(values)
        if any(isinstance(v, float) and np.isnan(v) for v in values):
            raise InvalidInputError(
                f"{what}: categorical column {column!r} lists NaN as a category; drop it before "
                "training (missing values are handled as missing)"
            )
        out[column] = values
    return out
