"""HistGradientBoostingClassifier / Regressor -> ONNX from the fitted predictors' nodes.

skl2onnx 1.20 fails on scikit-learn 1.9 and has no categorical splits, so this module replaces
its converter (registered once into skl2onnx, so the model also converts inside a Pipeline).
The graph reproduces ``_predictor.pyx``'s ``_predict_one_from_raw_data`` exactly:

* numeric split: ``x <= num_threshold`` goes left, in float64 (TreeEnsembleRegressor with
  double inputs and ``nodes_values_as_tensor``); NaN follows ``missing_go_to_left`` through the
  operator's missing-value tracking.
* categorical split: a derived column per categorical node holds 0 (code in the node's left
  bitset), 1 (a known category outside it) or NaN (NaN, negative, or a category unknown to the
  model: scikit-learn treats those as missing); the node splits that column at 0.5 with the same
  missing-value tracking.
* categories given as strings or pandas ``category`` columns (``categorical_features=
  "from_dtype"``): the model's OrdinalEncoder is a LabelEncoder, unknown -> NaN, and columns
  are reordered like its ColumnTransformer (categorical first).
* raw score = ``_baseline_prediction`` + sum of leaves, then the loss's inverse link (identity,
  exp, logistic, softmax); the label is ``classes_[argmax(proba)]`` like ``predict``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mlflow_deploy_plugins.errors import UnsupportedModelError

_logger = logging.getLogger(__name__)
_registered = False

#: categorical codes are uint8 in scikit-learn; slot 256 of a lookup row means "missing".
_CODES, _MISSING_SLOT = 256, 256


def HGB_TYPES() -> tuple[type, ...]:  # noqa: N802 - a lazily imported pair of classes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


def takes_table(model: Any) -> bool:
    """True when the model encodes categories itself: it reads named columns, strings included."""
    return isinstance(model, HGB_TYPES()) and getattr(model, "_preprocessor", None) is not None


def register_sklearn_converters() -> None:
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    update_registered_converter(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        _shapes,
        _convert,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        HistGradientBoostingRegressor, "SklearnHistGradientBoostingRegressor", _shapes, _convert
    )
    _registered = True


def _shapes(operator) -> None:
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    model = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    if len(operator.outputs) == 2:
        labels = np.asarray(model.classes_)
        label_type = StringTensorType if labels.dtype.kind in "OUS" else Int64TensorType
        operator.outputs[0].type = label_type([n])
        operator.outputs[1].type = FloatTensorType([n, len(labels)])
    else:
        operator.outputs[0].type = FloatTensorType([n, 1])


# --------------------------------------------------------------------------- the graph
def _convert(scope, operator, container) -> None:
    model = operator.raw_operator
    link = _link(model)
    graph = _Graph(scope, container)
    features = _features(graph, operator, model)
    trees, derived = _tree_attributes(model)
    if derived:
        features = graph.node(
            "Concat", [features, _derived_columns(graph, features, derived)], axis=1
        )
    k = model.n_trees_per_iteration_
    raw = graph.node(
        "TreeEnsembleRegressor",
        [features],
        op_domain="ai.onnx.ml",
        op_version=3,
        n_targets=k,
        aggregate_function="SUM",
        base_values_as_tensor=graph.tensor(np.asarray(model._baseline_prediction).reshape(-1)),
        **trees,
    )
    if link == "identity":
        container.add_node("Identity", [raw], [operator.outputs[0].full_name])
        return
    if link == "exp":
        container.add_node("Exp", [raw], [operator.outputs[0].full_name])
        return
    if link == "logistic":
        positive = graph.node("Sigmoid", [raw])
        negative = graph.node("Sub", [graph.constant(np.array([[1.0]], np.float32)), positive])
        proba = graph.node("Concat", [negative, positive], axis=1)
    else:
        proba = graph.node("Softmax", [raw], axis=1)
    container.add_node("Identity", [proba], [operator.outputs[1].full_name])
    index = graph.node("ArgMax", [proba], axis=1, keepdims=0)
    classes = np.asarray(model.classes_)
    classes = classes.astype(object if classes.dtype.kind in "OUS" else np.int64)
    container.add_node(
        "Gather", [graph.constant(classes), index], [operator.outputs[0].full_name], axis=0
    )


class _Graph:
    """Unique names and constants for nodes added through skl2onnx's container."""

    def __init__(self, scope, container):
        self.scope, self.container = scope, container

    def tensor(self, values: np.ndarray):
        from onnx import numpy_helper

        return numpy_helper.from_array(np.asarray(values))

    def constant(self, values: np.ndarray) -> str:
        from onnx import TensorProto

        name = self.scope.get_unique_variable_name("hgb_const")
        array = np.asarray(values)
        if array.dtype == object:
            elem, content = TensorProto.STRING, [str(v).encode() for v in array.ravel()]
        else:
            elem = {"f": TensorProto.FLOAT, "d": TensorProto.DOUBLE, "q": TensorProto.INT64}
            elem, content = elem[array.dtype.char.replace("l", "q")], array.ravel().tolist()
        self.container.add_initializer(name, elem, list(array.shape), content)
        return name

    def node(self, op_type: str, inputs: list[str], op_domain: str = "", **attrs) -> str:
        out = self.scope.get_unique_variable_name(f"hgb_{op_type.lower()}")
        self.container.add_node(
            op_type,
            inputs,
            [out],
            op_domain=op_domain,
            name=self.scope.get_unique_operator_name(f"Hgb{op_type}"),
            **attrs,
        )
        return out


def _features(graph: _Graph, operator, model) -> str:
    """The float64 [N, n_features] matrix the predictors read (after the model's encoder)."""
    from onnx import TensorProto

    inputs = [i.full_name for i in operator.inputs]
    preprocessor = getattr(model, "_preprocessor", None)
    if preprocessor is None:
        matrix = inputs[0] if len(inputs) == 1 else graph.node("Concat", inputs, axis=1)
        return graph.node("Cast", [matrix], to=TensorProto.DOUBLE)
    n = model.n_features_in_
    if len(inputs) == 1 and n > 1:
        columns = [graph.scope.get_unique_variable_name("hgb_column") for _ in range(n)]
        graph.container.add_node(
            "Split",
            [inputs[0], graph.constant(np.ones(n, np.int64))],
            columns,
            axis=1,
            name=graph.scope.get_unique_operator_name("HgbSplit"),
        )
        inputs = columns
    types = [i.type for i in operator.inputs] if len(operator.inputs) == n else None
    categorical = np.flatnonzero(model.is_categorical_)
    encoder = preprocessor.named_transformers_["encoder"]
    ordered = []
    for position, column in enumerate(categorical):
        is_string = types is not None and type(types[column]).__name__ == "StringTensorType"
        ordered.append(_encode(graph, inputs[column], encoder.categories_[position], is_string))
    for column in np.flatnonzero(~model.is_categorical_):
        ordered.append(graph.node("Cast", [inputs[column]], to=TensorProto.DOUBLE))
    return graph.node("Concat", ordered, axis=1) if len(ordered) > 1 else ordered[0]


def _encode(graph: _Graph, column: str, categories: np.ndarray, is_string: bool) -> str:
    """OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=nan): code or NaN."""
    from onnx import TensorProto

    known = [c for c in categories if not (isinstance(c, float) and np.isnan(c))]
    codes = [float(i) for i in range(len(known))]
    if is_string:
        keys = {"keys_strings": [str(c) for c in known]}
    else:
        column = graph.node("Cast", [column], to=TensorProto.FLOAT)
        keys = {"keys_floats": [float(c) for c in known]}
    encoded = graph.node(
        "LabelEncoder",
        [column],
        op_domain="ai.onnx.ml",
        op_version=2,
        values_floats=codes,
        default_float=float("nan"),
        **keys,
    )
    return graph.node("Cast", [encoded], to=TensorProto.DOUBLE)


def _derived_columns(graph: _Graph, features: str, derived: list[tuple[int, np.ndarray]]) -> str:
    """[N, J] float64: per categorical node, 0 = left, 1 = known right, NaN = treated as missing."""
    from onnx import TensorProto

    picked = graph.node(
        "Gather", [features, graph.constant(np.array([f for f, _ in derived], np.int64))], axis=1
    )
    missing = graph.node(
        "Or",
        [
            graph.node("IsNaN", [picked]),
            graph.node("Less", [picked, graph.constant(np.array(0.0))]),
        ],
    )
    safe = graph.node("Where", [missing, graph.constant(np.array(0.0)), picked])
    # C's (uint8)double: truncate, keep the low byte
    codes = graph.node(
        "Mod",
        [graph.node("Cast", [safe], to=TensorProto.INT64), graph.constant(np.array(_CODES))],
    )
    slot = graph.node("Where", [missing, graph.constant(np.array(_MISSING_SLOT)), codes])
    width = _CODES + 1
    offsets = graph.constant(np.arange(len(derived), dtype=np.int64) * width)
    table = np.concatenate([row for _, row in derived])
    return graph.node("Gather", [graph.constant(table), graph.node("Add", [slot, offsets])], axis=0)


# --------------------------------------------------------------------------- trees
def _tree_attributes(model) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    """TreeEnsembleRegressor attributes of every predictor, and the derived categorical columns
    (feature index, lookup row) they split on."""
    known, f_idx_map = (None, None)
    if getattr(model, "is_categorical_", None) is not None and model.is_categorical_.any():
        known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    n_features = model.n_features_in_
    columns: dict[str, list] = {
        key: []
        for key in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    derived: list[tuple[int, np.ndarray]] = []
    tree_id = 0
    for per_iteration in model._predictors:
        for k, predictor in enumerate(per_iteration):
            nodes = predictor.nodes
            for node_id, node in enumerate(nodes):
                columns["nodes_treeids"].append(tree_id)
                columns["nodes_nodeids"].append(node_id)
                if node["is_leaf"]:
                    for key, value in (
                        ("nodes_featureids", 0),
                        ("nodes_modes", "LEAF"),
                        ("nodes_values", 0.0),
                        ("nodes_truenodeids", 0),
                        ("nodes_falsenodeids", 0),
                        ("nodes_missing_value_tracks_true", 0),
                    ):
                        columns[key].append(value)
                    columns["target_treeids"].append(tree_id)
                    columns["target_nodeids"].append(node_id)
                    columns["target_ids"].append(k)
                    columns["target_weights"].append(float(node["value"]))
                    continue
                feature, threshold = int(node["feature_idx"]), float(node["num_threshold"])
                if node["is_categorical"]:
                    row = _lookup_row(
                        predictor.raw_left_cat_bitsets[node["bitset_idx"]],
                        known[f_idx_map[feature]],
                    )
                    derived.append((feature, row))
                    feature, threshold = n_features + len(derived) - 1, 0.5
                columns["nodes_featureids"].append(feature)
                columns["nodes_modes"].append("BRANCH_LEQ")
                columns["nodes_values"].append(threshold)
                columns["nodes_truenodeids"].append(int(node["left"]))
                columns["nodes_falsenodeids"].append(int(node["right"]))
                columns["nodes_missing_value_tracks_true"].append(int(node["missing_go_to_left"]))
            tree_id += 1
    attrs = {k: v for k, v in columns.items() if k not in ("nodes_values", "target_weights")}
    attrs["nodes_values_as_tensor"] = _double_tensor(columns["nodes_values"])
    attrs["target_weights_as_tensor"] = _double_tensor(columns["target_weights"])
    return attrs, derived


def _double_tensor(values: list[float]):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float64))


def _lookup_row(left_bitset: np.ndarray, known_bitset: np.ndarray) -> np.ndarray:
    codes = np.arange(_CODES)
    words, bits = codes // 32, codes % 32
    in_left = (left_bitset[words] >> bits.astype(np.uint32)) & 1
    is_known = (known_bitset[words] >> bits.astype(np.uint32)) & 1
    row = np.where(in_left == 1, 0.0, np.where(is_known == 1, 1.0, np.nan))
    return np.append(row, np.nan)  # the missing slot


def _link(model) -> str:
    link = type(model._loss.link).__name__
    names = {
        "IdentityLink": "identity",
        "LogLink": "exp",
        "LogitLink": "logistic",
        "MultinomialLogit": "softmax",
    }
    if link not in names:
        raise UnsupportedModelError(
            f"Cannot convert {type(model).__module__}.{type(model).__name__} with "
            f"loss={model.loss!r}: its link function {link} has no ONNX converter here "
            "(identity, log, logit and multinomial links are supported). Train it with one of "
            "those losses or serve the source model with MLflow."
        )
    return names[link]
