"""Categorical columns of LightGBM / XGBoost models trained on pandas ``category`` columns.

onnxmltools converts the trees of such a model when fed the category CODES. The twin instead
takes the category values (strings, one input per column) and maps them to the codes of the
training categories inside the graph (a LabelEncoder per column, in front of the trees), so
callers send what they sent the source. A value the model never saw is treated exactly like the
source does:

* LightGBM re-codes a frame with its training categories (``set_categories``): an unseen value
  becomes NaN, i.e. missing. The twin maps it to NaN.
* XGBoost (>= 3.1 re-codes by name) sends an unseen category the way its split sends categories
  outside the split's bitset, which onnxmltools writes as the "equal" side of a chain of
  BRANCH_EQ nodes. The twin maps it to a sentinel code and adds the sentinel to every chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import InputBinding, spec_inputs_from_columns
from mlflow_deploy_plugins.errors import InvalidInputError

#: the code an unseen XGBoost category gets inside the twin (never a real code: codes are >= 0)
XGBOOST_UNSEEN = -2.0
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
    """The frame the source is given: categorical columns as pandas ``category`` (values the
    model never saw included, so the source itself decides what they mean)."""
    frame = sample[list(columns)].copy()
    for column in categories:
        if not isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype("category")
    return frame


def prepend_encoder(
    model: onnx.ModelProto,
    graph_input: str,
    columns: Sequence[str],
    categories: Mapping[str, Sequence],
    unseen: float,
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
                    default_float=unseen,
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


def add_unseen_to_equal_chains(model: onnx.ModelProto, features: Sequence[int]) -> int:
    """Add an ``== XGBOOST_UNSEEN`` node at the end of every BRANCH_EQ chain on ``features``
    (same true branch) in each TreeEnsemble node, in place; returns how many were added."""
    from onnx import helper

    added = 0
    for node in model.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {
            a.name: list(helper.get_attribute_value(a))
            for a in node.attribute
            if a.ints or a.floats or a.strings
        }
        tree, ids = attrs["nodes_treeids"], attrs["nodes_nodeids"]
        index = {(t, n): i for i, (t, n) in enumerate(zip(tree, ids, strict=True))}
        next_id = {}
        for t, n in zip(tree, ids, strict=True):
            next_id[t] = max(next_id.get(t, 0), n + 1)
        originals = len(tree)
        for i in range(originals):
            if (
                attrs["nodes_modes"][i] != b"BRANCH_EQ"
                or attrs["nodes_featureids"][i] not in features
            ):
                continue
            false_at = index.get((tree[i], attrs["nodes_falsenodeids"][i]))
            if false_at is not None and _same_chain(attrs, i, false_at):
                continue  # not the chain's last node
            new_id = next_id[tree[i]]
            next_id[tree[i]] += 1
            for key, value in (
                ("nodes_treeids", tree[i]),
                ("nodes_nodeids", new_id),
                ("nodes_featureids", attrs["nodes_featureids"][i]),
                ("nodes_modes", b"BRANCH_EQ"),
                ("nodes_values", XGBOOST_UNSEEN),
                ("nodes_truenodeids", attrs["nodes_truenodeids"][i]),
                ("nodes_falsenodeids", attrs["nodes_falsenodeids"][i]),
            ):
                attrs[key].append(value)
            for key in ("nodes_hitrates", "nodes_missing_value_tracks_true"):
                if key in attrs:
                    attrs[key].append(attrs[key][i])
            attrs["nodes_falsenodeids"][i] = new_id
            added += 1
        # onnxruntime reads each tree's nodes as one contiguous run: keep them grouped
        order = sorted(range(len(tree)), key=lambda k: (tree[k], k))
        for key in attrs:
            if key.startswith("nodes_") and len(attrs[key]) == len(tree):
                attrs[key] = [attrs[key][k] for k in order]
        for attribute in node.attribute:
            if attribute.name in attrs:
                attribute.CopyFrom(helper.make_attribute(attribute.name, attrs[attribute.name]))
    return added


def _same_chain(attrs: dict, i: int, j: int) -> bool:
    return (
        attrs["nodes_modes"][j] == b"BRANCH_EQ"
        and attrs["nodes_featureids"][j] == attrs["nodes_featureids"][i]
        and attrs["nodes_truenodeids"][j] == attrs["nodes_truenodeids"][i]
    )


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
