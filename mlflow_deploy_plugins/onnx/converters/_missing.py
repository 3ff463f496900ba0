"""scikit-learn trees route missing values (``tree_.missing_go_to_left``, scikit-learn >= 1.3);
skl2onnx's TreeEnsemble nodes do not say where NaN goes, so onnxruntime sends it to the false
(right) branch. This copies scikit-learn's routing into ``nodes_missing_value_tracks_true``.

``BRANCH_LEQ`` nodes are written by skl2onnx with the left child as the true branch and the
sklearn node index as the node id (``skl2onnx.common.tree_ensemble.add_tree_to_attribute_pairs``),
so "missing goes left" is "missing tracks true". The attribute exists since ai.onnx.ml opset 1 and
onnxruntime honours it for every branch mode.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import helper

_logger = logging.getLogger(__name__)

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
#: scikit-learn estimators that treat columns differently (selection, per-column functions)
_PER_COLUMN = ("ColumnTransformer", "FeatureUnion", "FunctionTransformer")


def uniform_missing_handling(estimators: list) -> bool:
    """True when every column meets the same steps, all of them scikit-learn's own: then the
    source accepts a missing value in one column exactly when it accepts them in all, and the
    conversion's probe needs one call instead of one per column."""
    return all(
        type(e).__module__.startswith("sklearn.") and type(e).__name__ not in _PER_COLUMN
        for e in estimators
    )


_ATTRIBUTE = "nodes_missing_value_tracks_true"


def sklearn_trees(estimator: Any) -> list | None:
    """The fitted ``tree_`` objects of a tree or forest, in skl2onnx's tree-id order."""
    tree = getattr(estimator, "tree_", None)
    if tree is not None and hasattr(tree, "missing_go_to_left"):
        return [tree]
    members = getattr(estimator, "estimators_", None)
    if members is None:
        return None
    flat = np.asarray(members, dtype=object).ravel()  # gradient boosting: [n_estimators, K]
    trees = [getattr(m, "tree_", None) for m in flat]
    if not trees or any(t is None or not hasattr(t, "missing_go_to_left") for t in trees):
        return None
    return trees


def route_missing_like_sklearn(model: onnx.ModelProto, estimators: list) -> list[str]:
    """Set NaN routing on the graph's tree ensembles from the matching sklearn estimators.

    Args:
        model: the converted graph (edited in place).
        estimators: the model's estimators in pipeline order; those with trees are matched, in
            order, with the graph's TreeEnsemble nodes.

    Returns:
        Notes for the report (empty when the graph has no sklearn trees).
    """
    forests = [t for t in (sklearn_trees(e) for e in estimators) if t is not None]
    nodes = [n for n in model.graph.node if n.op_type in _TREE_OPS]
    if not forests or not nodes:
        return []
    if len(forests) == 1 and len(nodes) == len(forests[0]) > 1:
        # IsolationForest: skl2onnx converts each tree into its own one-tree node.
        pairs = _pair_one_tree_nodes(nodes, forests[0])
        if pairs is not None:
            for node, tree in pairs:
                _set_routing(node, [tree])
            return [
                "trees route missing values like scikit-learn (nodes_missing_value_tracks_true)"
            ]
    if len(forests) != len(nodes):
        _logger.info(
            "%d tree estimators, %d tree nodes: NaN routing not set", len(forests), len(nodes)
        )
        return [
            "missing-value routing of the trees not set (estimators and tree nodes do not "
            "pair up); the gate's missing-value rows decide"
        ]
    for node, trees in zip(nodes, forests, strict=True):
        _set_routing(node, trees)
    return ["trees route missing values like scikit-learn (nodes_missing_value_tracks_true)"]


def _set_routing(node: onnx.NodeProto, trees: list) -> None:
    attrs = {a.name: a for a in node.attribute}
    tree_ids = list(attrs["nodes_treeids"].ints)
    node_ids = list(attrs["nodes_nodeids"].ints)
    modes = [m.decode() if isinstance(m, bytes) else m for m in attrs["nodes_modes"].strings]
    tracks = [
        int(mode != "LEAF" and bool(trees[t].missing_go_to_left[i]))
        for t, i, mode in zip(tree_ids, node_ids, modes, strict=True)
    ]
    if _ATTRIBUTE in attrs:
        node.attribute.remove(attrs[_ATTRIBUTE])
    node.attribute.append(helper.make_attribute(_ATTRIBUTE, tracks))


def _pair_one_tree_nodes(nodes: list, trees: list) -> list | None:
    """Each one-tree TreeEnsemble node with the sklearn tree it was built from, matched by
    their split thresholds (the graph's node order need not be the estimators' order); None
    when some node does not match exactly one tree."""
    remaining = list(trees)
    pairs = []
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" not in attrs or set(attrs["nodes_treeids"].ints) != {0}:
            return None
        ids = np.asarray(attrs["nodes_nodeids"].ints)
        modes = [m.decode() if isinstance(m, bytes) else m for m in attrs["nodes_modes"].strings]
        split = ids[[m != "LEAF" for m in modes]]
        values = np.asarray(attrs["nodes_values"].floats)[[m != "LEAF" for m in modes]]
        order = np.argsort(split)
        split, values = split[order], values[order]
        match = [
            tree
            for tree in remaining
            if tree.node_count == len(ids)
            and np.array_equal(np.flatnonzero(tree.children_left != -1), split)
            and np.allclose(tree.threshold[split].astype(np.float32), values)
        ]
        if len(match) != 1:
            return None
        remaining.remove(match[0])
        pairs.append((node, match[0]))
    return pairs
