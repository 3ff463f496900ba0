"""XGBoost -> ONNX with onnxmltools: Boosters from ``xgb.train`` and the scikit-learn API models.

What the ONNX graph returns follows what the MLflow ``xgboost`` pyfunc returns, which is
``model.predict(df)`` (``Booster.predict(DMatrix(df))`` for a raw Booster):

* ``XGBClassifier`` / ``XGBRFClassifier``: labels (default role ``label``), probabilities available.
* ``XGBRegressor`` / ``XGBRFRegressor``: values.
* ``Booster`` with ``binary:logistic``: P(class=1), 1-D; the graph's ``probabilities`` output is
  rewritten to that column (shape ``[N]``) and is the default role; ``label`` stays available.
* ``Booster`` with ``multi:softprob``: the ``[N, k]`` probability matrix (default ``probabilities``).
* ``Booster`` with ``multi:softmax``: class indices (default ``label``; the source returns them as
  floats, the graph as int64).
* ``Booster`` with a regression objective: values.

onnxmltools only reads feature names of the form ``f0, f1, ...``: a model fitted on named columns is
converted from a copy without names; the IOSpec keeps the real names as its columns.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.errors import ConversionError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters._graph import default_roles, outputs_from_graph
from mlflow_deploy_plugins.onnx.converters._trees import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    booster_reference,
    clamp_opset,
    default_role,
    dynamic_batch,
    matrix_inputs,
    name_for_role,
    positive_class_probability,
    rewrite_output,
)
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)
from mlflow_deploy_plugins.serving.iospec import LABEL, PROBABILITIES, VALUE, IOSpec

_logger = logging.getLogger(__name__)

#: multi:softmax Boosters predict class indices, not probabilities.
_SOFTMAX = "multiclass-label"

#: XGBoost objectives onnxmltools converts right (checked against Booster.predict).
_OBJECTIVE_KIND = {
    "binary:logistic": BINARY,
    "multi:softprob": MULTICLASS,
    "multi:softmax": _SOFTMAX,
    "reg:squarederror": REGRESSION,
    "reg:squaredlogerror": REGRESSION,
    "reg:pseudohubererror": REGRESSION,
    "reg:absoluteerror": REGRESSION,
    "reg:quantileerror": REGRESSION,
    "count:poisson": REGRESSION,
    "reg:gamma": REGRESSION,
    "reg:tweedie": REGRESSION,
}


class XGBoostConverter:
    flavors = ("xgboost",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = source.native
        kind, objective = _kind(model)
        booster = _booster(model)
        inputs, notes = matrix_inputs(
            _feature_names(booster),
            booster.num_features(),
            sample,
            _describe(model),
            strict_names=True,
        )
        opset, opset_notes = clamp_opset(options.target_opset)
        try:
            onx = convert_xgboost(
                _convertible(model),
                initial_types=[(inputs[0].name, FloatTensorType([None, len(inputs[0].columns)]))],
                target_opset=opset,
            )
        except Exception as e:  # onnxmltools raises RuntimeError/ValueError/...
            raise ConversionError(
                f"onnxmltools could not convert {_describe(model)} (objective {objective!r}): "
                f"{type(e).__name__}: {e}"
            ) from e
        dynamic_batch(onx)
        roles = default_roles(onx)
        raw_booster = _is_booster(model)
        if objective == "multi:softmax":
            # onnxmltools leaves the class scores untransformed for this objective.
            rewrite_output(onx, name_for_role(roles, PROBABILITIES), "Softmax", axis=1)
            notes.append("multi:softmax: a Softmax turns the class scores into probabilities")
        if raw_booster and kind == BINARY:
            positive_class_probability(onx, name_for_role(roles, PROBABILITIES))
            notes.append(
                "binary Booster: the probabilities output is P(class=1), shape [N], "
                "as Booster.predict returns it"
            )

        classifier = kind in (BINARY, MULTICLASS, _SOFTMAX)
        task = "classification" if classifier else "regression"
        io = IOSpec(inputs=inputs, outputs=(), task=task)
        reference = self.reference_outputs(source, sample.head(2), io)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, roles, reference),
            task=task,
            classes=_classes(model, booster) if classifier else None,
            # Only a raw Booster keeps the softmax kind: its predict returns class indices.
            default_role=LABEL
            if kind == _SOFTMAX
            else default_role(source.pyfunc_predict_fn, kind, raw_booster),
        )
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="onnxmltools",
            converter_version=package_version("onnxmltools"),
            notes=[*notes, *opset_notes],
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        import xgboost

        model = source.native
        kind, _ = _kind(model)
        frame = sample[io.columns] if io.columns else sample
        # Named models validate column names (as the pyfunc does); nameless ones take an array.
        x = frame if _feature_names(_booster(model)) is not None else frame.to_numpy()
        if _is_booster(model):
            data = xgboost.DMatrix(x)
            pred = np.asarray(model.predict(data))
            if kind == _SOFTMAX:
                margin = np.asarray(model.predict(data, output_margin=True), dtype=np.float64)
                return {LABEL: pred.astype(np.int64), PROBABILITIES: _softmax(margin)}
            return booster_reference(kind, pred)
        if kind in (BINARY, MULTICLASS, _SOFTMAX):
            return {
                LABEL: np.asarray(model.predict(x)),
                PROBABILITIES: np.asarray(model.predict_proba(x)),
            }
        return {VALUE: np.asarray(model.predict(x))}


# --------------------------------------------------------------------------- model inspection
def _is_booster(model: Any) -> bool:
    import xgboost

    return isinstance(model, xgboost.Booster)


def _booster(model: Any):
    return model if _is_booster(model) else model.get_booster()


def _sklearn_kind(model: Any) -> str | None:
    """BINARY/MULTICLASS for the sklearn classifiers, REGRESSION for regressors, else None."""
    from xgboost import XGBClassifier, XGBRegressor, XGBRFClassifier, XGBRFRegressor

    if type(model) in (XGBClassifier, XGBRFClassifier):
        return MULTICLASS
    if type(model) in (XGBRegressor, XGBRFRegressor):
        return REGRESSION
    return None


def _kind(model: Any) -> tuple[str, str]:
    """(kind, objective); UnsupportedModelError for what onnxmltools gets wrong."""
    sk_kind = None if _is_booster(model) else _sklearn_kind(model)
    if not _is_booster(model) and sk_kind is None:
        raise UnsupportedModelError(
            f"Cannot convert {type(model).__module__}.{type(model).__name__} with the XGBoost "
            "converter: expected an xgboost Booster, XGBClassifier, XGBRegressor, "
            "XGBRFClassifier or XGBRFRegressor"
        )
    try:
        booster = _booster(model)
        learner = json.loads(booster.save_config())["learner"]
    except Exception as e:  # an unfitted sklearn model raises NotFittedError
        raise UnsupportedModelError(
            f"Cannot read the configuration of {_describe(model)} (is it fitted?): {e}"
        ) from e
    objective = learner.get("objective", {}).get("name", "unknown")
    kind = _OBJECTIVE_KIND.get(objective)
    if kind is None or (sk_kind is not None and (sk_kind == REGRESSION) != (kind == REGRESSION)):
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)} with objective {objective!r}: onnxmltools "
            f"converts XGBoost objectives {', '.join(sorted(_OBJECTIVE_KIND))} correctly"
        )
    if int(learner.get("learner_model_param", {}).get("num_target", 1) or 1) > 1:
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)}: multi-target models are not supported"
        )
    if any(t == "c" for t in booster.feature_types or ()):
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)}: categorical features are not supported"
        )
    missing = getattr(model, "missing", np.nan)
    if missing is not None and not np.isnan(missing):
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)}: missing={missing!r}; onnxmltools only "
            "supports missing=nan"
        )
    if sk_kind is not None and kind != REGRESSION:
        n_classes = len(getattr(model, "classes_", ()))
        kind = BINARY if n_classes == 2 else MULTICLASS
    return kind, objective


def _feature_names(booster) -> list[str] | None:
    names = booster.feature_names
    return None if not names else [str(n) for n in names]


def _convertible(model: Any) -> Any:
    """A copy without feature names when the model has them (onnxmltools wants f0, f1, ...)."""
    if _feature_names(_booster(model)) is None:
        return model
    if _is_booster(model):
        clone = model.copy()
        clone.feature_names = None
        return clone
    clone = copy.deepcopy(model)
    clone.get_booster().feature_names = None
    return clone


def _classes(model: Any, booster) -> tuple:
    if not _is_booster(model):
        return tuple(np.asarray(model.classes_).tolist())
    learner = json.loads(booster.save_config())["learner"]
    n = int(learner["learner_model_param"].get("num_class", 0) or 0)
    return tuple(range(max(n, 2)))


def _softmax(margin: np.ndarray) -> np.ndarray:
    z = np.exp(margin - margin.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _describe(model: Any) -> str:
    return f"xgboost.{type(model).__name__}"
