"""Tied votes get the source's label: the first class among the highest probabilities.

A random forest's probabilities are vote shares: on fresh rows two classes often tie exactly
(0.35 / 0.30 / 0.35 for a 20-tree forest), and sklearn's ``predict`` (``argmax``) answers the
first. The converted ``TreeEnsembleClassifier`` sums the same votes in float32, in an order that
depends on the batch size, so its own label picks either class, and can change with the other
rows of a batch (found on a model zoo: 37 of 5,000 fresh rows, none on the training rows the
gate checks). :func:`first_max_labels` rebuilds the label output from the probabilities as
``classes[first index whose probability is within EPS of the row's maximum]``, when the source's
labels are its probabilities' argmax on the whole sample and the graph's label comes from a
vote-averaging tree ensemble that names its classes. Output names, dtypes and shapes are
unchanged; the parity gate runs on the result.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, IOSpec
from mlflow_deploy_plugins.onnx.converters._graph import detach_output, free_name

_logger = logging.getLogger(__name__)

#: Probabilities this close to the row's maximum count as tied. float32 sums of a few thousand
#: vote shares err by ~1e-6; distinct vote shares of a forest differ by 1/n_trees or more.
EPS = 1e-5
_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
#: ReduceMax takes its axes as an input from opset 18 (an attribute before).
_AXES_INPUT_SINCE = 18


def first_max_labels(
    model: onnx.ModelProto, io: IOSpec, reference: dict
) -> tuple[onnx.ModelProto, str | None]:
    """``(model, label output rebuilt or None)``: a copy of ``model`` whose label output is the
    first class among the top probabilities, or ``model`` itself when that does not apply.

    ``reference`` maps roles to the source's outputs on the sample: it applies only when every
    source label there is ``classes[argmax(probabilities)]`` (not, e.g., SVC's Platt-scaled
    probabilities).
    """
    label = next((o for o in io.outputs if o.role == LABEL), None)
    proba = next((o for o in io.outputs if o.role == PROBABILITIES), None)
    if label is None or proba is None or not io.classes:
        return model, None
    classes = _graph_classes(model, label.name)
    source_proba = reference.get(PROBABILITIES)
    source_labels = reference.get(LABEL)
    if classes is None or source_proba is None or source_labels is None:
        return model, None
    source_proba = np.asarray(source_proba, dtype=np.float64)
    if source_proba.ndim != 2 or not source_proba.shape[1] == len(classes) == len(io.classes):
        return model, None
    first = np.asarray(io.classes, dtype=object)[np.argmax(source_proba, axis=1)]
    if [str(v) for v in first] != [str(v) for v in np.asarray(source_labels).ravel()]:
        return model, None  # the source's label is not its first top probability
    elem = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if elem.get(proba.name) not in _FLOATS:
        return model, None
    rebuilt = onnx.ModelProto()
    rebuilt.CopyFrom(model)
    _rebuild(rebuilt, label.name, proba.name, classes, _FLOATS[elem[proba.name]])
    onnx.checker.check_model(rebuilt)
    _logger.debug("Label %r rebuilt as the first class among the top probabilities", label.name)
    return rebuilt, label.name


def _graph_classes(model: onnx.ModelProto, label: str) -> np.ndarray | None:
    """The class labels, in probability-column order, of the node producing ``label`` when it
    averages votes (a tree ensemble without post transform: random forests, extra trees, single
    trees). Boosted trees' and linear models' probabilities go through a sigmoid or softmax of
    float sums, which do not tie: their graphs are left as they are (no extra nodes to run)."""
    for node in model.graph.node:
        if label in node.output:
            post = next((a.s for a in node.attribute if a.name == "post_transform"), b"NONE")
            if node.op_type != "TreeEnsembleClassifier" or post != b"NONE":
                return None
            for attr in node.attribute:
                if attr.name == "classlabels_int64s" and attr.ints:
                    return np.array(list(attr.ints), dtype=np.int64)
                if attr.name == "classlabels_strings" and attr.strings:
                    return np.array([s.decode() for s in attr.strings], dtype=object)
            return None
    return None


def _rebuild(model, label: str, proba: str, classes: np.ndarray, float_type) -> None:
    graph = model.graph
    detach_output(graph, label, f"{label}_by_graph")  # kept for whatever reads it inside
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    keys = ("max", "thr", "low", "top", "in", "idx")
    names = {k: free_name(graph, f"{label}_tie_{k}") for k in keys}
    eps, table = free_name(graph, f"{label}_tie_eps"), free_name(graph, f"{label}_classes")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(EPS, dtype=float_type), eps),
            numpy_helper.from_array(classes, table),
        ]
    )
    if opset >= _AXES_INPUT_SINCE:
        axes = free_name(graph, f"{label}_tie_axes")
        graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
        reduce = helper.make_node("ReduceMax", [proba, axes], [names["max"]], keepdims=1)
    else:
        reduce = helper.make_node("ReduceMax", [proba], [names["max"]], axes=[1], keepdims=1)
    graph.node.extend(
        [
            reduce,
            helper.make_node("Sub", [names["max"], eps], [names["thr"]]),
            helper.make_node("Less", [proba, names["thr"]], [names["low"]]),
            helper.make_node("Not", [names["low"]], [names["top"]]),
            helper.make_node("Cast", [names["top"]], [names["in"]], to=TensorProto.INT32),
            helper.make_node("ArgMax", [names["in"]], [names["idx"]], axis=1, keepdims=0),
            helper.make_node("Gather", [table, names["idx"]], [label], axis=0),
        ]
    )
