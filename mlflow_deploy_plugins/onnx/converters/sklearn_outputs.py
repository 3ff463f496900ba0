"""What a scikit-learn model serves once converted: its outputs, the source method behind each
one, the skl2onnx options that produce them, and the copies made where skl2onnx needs a setting
that does not change predictions.

Every served output has a role (``label``, ``probabilities``, ``value``) and the name of the
source method that computes it (``IOSpec.extra["source_methods"]``): the parity gate compares
each role with what that method returns, and an output the source cannot produce is not served
(a LinearSVC's decision scores are ``value``, never ``probabilities``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, VALUE
from mlflow_deploy_plugins.errors import InvalidInputError

_logger = logging.getLogger(__name__)

#: key of ``ConversionOptions.extra`` and of the source MLmodel's ``metadata`` holding per-class
#: skl2onnx options: ``{"TfidfVectorizer": {"locale": "C.UTF-8"}}``.
CONVERTER_OPTIONS = "converter_options"

#: StringNormalizer locale used for text vectorizers unless the user names one: "C" exists on
#: every system (skl2onnx's default, en_US.UTF-8, is absent from slim images and fails to load).
DEFAULT_TEXT_LOCALE = "C"


def final_estimator(model: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        steps = [s for _, s in model.steps if s not in (None, "passthrough")]
        model = steps[-1]
    return model


def source_methods(model: Any) -> dict[str, str]:
    """Output role -> the source method computing it, for every output the twin serves."""
    from sklearn.base import is_classifier, is_clusterer, is_outlier_detector
    from sklearn.mixture._base import BaseMixture

    final = final_estimator(model)
    if isinstance(final, BaseMixture):
        return {LABEL: "predict", PROBABILITIES: "predict_proba", VALUE: "score_samples"}
    if is_classifier(final):
        methods = {LABEL: "predict"}
        if hasattr(model, "predict_proba"):
            methods[PROBABILITIES] = "predict_proba"
        elif hasattr(model, "decision_function"):
            methods[VALUE] = "decision_function"
        return methods
    if is_outlier_detector(final) and hasattr(model, "decision_function"):
        return {LABEL: "predict", VALUE: "decision_function"}
    if is_clusterer(final) and hasattr(model, "transform"):
        return {LABEL: "predict", VALUE: "transform"}
    return {VALUE: "predict"}


def task_of(methods: Mapping[str, str], classifier: bool) -> str:
    if classifier:
        return "classification"
    return "other" if LABEL in methods else "regression"


def served_roles(graph_roles: Mapping[str, str], methods: Mapping[str, str]) -> dict[str, str]:
    """Graph output name -> role, keeping only roles the source produces.

    skl2onnx names a classifier's decision scores ``probabilities`` when the source has no
    ``predict_proba``: that output is the ``value`` role (``decision_function``).
    """
    roles = {}
    for name, role in graph_roles.items():
        if role == PROBABILITIES and PROBABILITIES not in methods:
            role = VALUE
        if role in methods and role not in roles.values():
            roles[name] = role
    return roles


def two_column_scores(onx: Any, roles: Mapping[str, str], reference: Mapping[str, Any]) -> list:
    """Graph outputs of shape ``[N, 2]`` whose source method returns ``[N]``: a binary SVC's
    ``decision_function``, which skl2onnx writes with both signs (``[d, -d]``)."""
    import numpy as np

    from mlflow_deploy_plugins.onnx.converters._graph import graph_shape

    shapes = {o.name: graph_shape(o) for o in onx.graph.output}
    return [
        name
        for name, role in roles.items()
        if role == VALUE
        and np.asarray(reference.get(role, ())).ndim == 1
        and shapes.get(name, ())[1:] == (2,)
    ]


def narrow_scores(
    onx: Any, names: list, feed: Mapping[str, Any], expected: Any, session: Any
) -> list[str]:
    """Make each ``[N, 2]`` output in ``names`` return its one column that equals ``expected``
    (the source's 1-D values on ``feed``'s rows), in place; the gate then checks it on the whole
    sample. No matching column leaves the output as it is: the gate refuses it, naming shapes.
    ``session``: onnxruntime's session over ``onx`` as it is before this edit."""
    import numpy as np
    from onnx import numpy_helper

    from mlflow_deploy_plugins.onnx.converters._graph import rewrite_output

    expected = np.asarray(expected, dtype=float)
    notes = []
    for name in names:
        got = session.run([name], dict(feed))[0]
        for column in range(2):
            if np.allclose(got[:, column], expected, atol=1e-4, rtol=1e-3):
                index = numpy_helper.from_array(np.array(column, dtype=np.int64), f"{name}_column")
                rewrite_output(onx, name, "Gather", [index], batch_only=True, axis=1)
                notes.append(
                    f"output '{name}': column {column} of the converter's [N, 2] scores, the one "
                    "the source's 1-D decision_function equals"
                )
                break
    return notes


# --------------------------------------------------------------------------- conversion copies
def conversion_copy(model: Any) -> tuple[Any, list[str]]:
    """``model`` or a deep copy with settings that do not change predict outputs but that
    skl2onnx needs; the notes say what was changed."""
    from sklearn.ensemble import VotingClassifier
    from sklearn.preprocessing import KBinsDiscretizer

    from mlflow_deploy_plugins.onnx.converters.sklearn import iter_estimators

    def needs_copy(est) -> bool:
        if isinstance(est, VotingClassifier):
            return bool(est.flatten_transform)
        return isinstance(est, KBinsDiscretizer) and est.encode == "onehot"

    if not any(needs_copy(est) for est in iter_estimators(model)):
        return model, []
    model = copy.deepcopy(model)
    notes = []
    for est in iter_estimators(model):
        if isinstance(est, VotingClassifier) and est.flatten_transform:
            est.flatten_transform = False
            notes.append(
                "VotingClassifier converted with flatten_transform=False (it only shapes "
                "transform(); skl2onnx implements the other setting only)"
            )
        elif isinstance(est, KBinsDiscretizer) and est.encode == "onehot":
            est.encode = "onehot-dense"
            notes.append(
                "KBinsDiscretizer(encode='onehot') converted as 'onehot-dense': the same values "
                "as a dense matrix (ONNX has no sparse outputs)"
            )
    return model, notes


# --------------------------------------------------------------------------- skl2onnx options
def skl2onnx_options(model: Any, user_options: Mapping[str, Mapping] | None = None) -> dict:
    """Options by estimator id: ZipMap off for every classifier that has it; exact division in
    scalers (float32 split flips); GaussianMixture's score_samples output; a text locale that
    exists everywhere; then the user's options by class name, which win."""
    from sklearn.base import is_classifier
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.mixture._base import BaseMixture
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlflow_deploy_plugins.onnx.converters.sklearn import iter_estimators

    user_options = dict(user_options or {})
    options: dict = {}
    used = set()
    for est in iter_estimators(model):
        opts = {}
        if is_classifier(est) and not isinstance(est, Pipeline):
            _accept_zipmap(est)
        allowed = _allowed_options(est)
        if "zipmap" in allowed and not isinstance(est, Pipeline):  # its final step decides
            opts["zipmap"] = False
        if isinstance(est, StandardScaler):
            opts["div"] = "div"
        if isinstance(est, BaseMixture):
            opts["score_samples"] = True
        if isinstance(est, CountVectorizer):  # TfidfVectorizer subclasses it
            opts["locale"] = DEFAULT_TEXT_LOCALE
        name = type(est).__name__
        if name in user_options:
            unknown = sorted(set(user_options[name]) - set(allowed))
            if unknown:
                raise InvalidInputError(
                    f"converter_options[{name!r}] has option(s) {unknown} that skl2onnx does not "
                    f"accept for {type(est).__module__}.{name}; accepted: {sorted(allowed)}"
                )
            opts.update(user_options[name])
            used.add(name)
        if opts:
            options[id(est)] = opts
    unused = sorted(set(user_options) - used)
    if unused:
        raise InvalidInputError(
            f"converter_options name estimator class(es) {unused} that the model does not "
            "contain; key the options by the class name of a step of the model"
        )
    return options


def _accept_zipmap(est: Any) -> None:
    """skl2onnx's pipeline parser asks every classifier for ``zipmap``, and fails for those whose
    converter does not list it (LinearSVC: "Option 'zipmap' not in [...]"); listing it lets us
    pass ``zipmap=False``, which is what the converter emits anyway (no ZipMap node)."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    alias = sklearn_operator_name_map.get(type(est))
    if alias is None:
        return
    try:
        allowed = get_converter(alias).get_allowed_options()
    except ValueError:
        return
    if isinstance(allowed, dict) and "zipmap" not in allowed:
        allowed["zipmap"] = [True, False, "columns"]


def _allowed_options(est: Any) -> set[str]:
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    alias = sklearn_operator_name_map.get(type(est))
    if alias is None:
        return set()
    try:
        return set(get_converter(alias).get_allowed_options() or {})
    except ValueError:
        return set()


def user_converter_options(options_extra: Mapping, source: Any) -> dict:
    """Per-class skl2onnx options: the source MLmodel's ``metadata["converter_options"]``,
    overridden by ``ConversionOptions.extra["converter_options"]``."""
    merged: dict = {}
    metadata = source.metadata
    if metadata is None and source.local_path:  # a SourceModel built without its MLmodel read
        try:
            from mlflow.models import Model

            metadata = Model.load(source.local_path).metadata
        except Exception:  # a model without an MLmodel file (tests, raw paths): no metadata
            metadata = None
    merged.update(_checked((metadata or {}).get(CONVERTER_OPTIONS), "the MLmodel metadata"))
    merged.update(_checked(options_extra.get(CONVERTER_OPTIONS), "ConversionOptions.extra"))
    return merged


def _checked(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise InvalidInputError(
            f"{CONVERTER_OPTIONS} in {where} must map an estimator class name to a dict of "
            f"skl2onnx options, e.g. {{'TfidfVectorizer': {{'locale': 'C.UTF-8'}}}}; got {value!r}"
        )
    return {str(k): dict(v) for k, v in value.items()}


def describe_options(options: Mapping) -> list[str]:
    notes = []
    flat = [o for opts in options.values() for o in opts.items()]
    if ("div", "div") in flat:
        notes.append(
            "StandardScaler converted with div='div' (exact division, float32 split safety)"
        )
    if ("zipmap", False) in flat:
        notes.append("classifier converted with zipmap=False (probabilities as a tensor)")
    locales = sorted({v for k, v in flat if k == "locale"})
    if locales:
        notes.append(
            f"text vectorizer converted with locale {locales} (pass converter_options="
            "{'TfidfVectorizer': {'locale': ...}} for another lowercasing locale)"
        )
    return notes
