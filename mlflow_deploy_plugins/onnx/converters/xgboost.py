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

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, IOSpec
from mlflow_deploy_plugins.errors import UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters import categorical
from mlflow_deploy_plugins.onnx.converters._graph import rewrite_output
from mlflow_deploy_plugins.onnx.converters._trees import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    OnnxmltoolsTreeConverter,
    booster_reference,
    name_for_role,
)

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


# --------------------------------------------------------------------------- the converter
class XGBoostConverter(OnnxmltoolsTreeConverter):
    flavors = ("xgboost",)
    strict_names = True
    classifier_kinds = (BINARY, MULTICLASS, _SOFTMAX)
    unseen_categories = categorical.UNSEEN_IS_REFUSED

    _is_booster = staticmethod(_is_booster)
    _booster = staticmethod(_booster)
    _kind = staticmethod(_kind)
    _describe = staticmethod(_describe)

    def _feature_names(self, booster) -> list[str] | None:
        return _feature_names(booster)

    def _num_features(self, booster) -> int:
        return booster.num_features()

    def _onnxmltools_convert(self, model: Any, objective: str, initial_types, target_opset: int):
        from onnxmltools import convert_xgboost

        return convert_xgboost(
            _convertible(model), initial_types=initial_types, target_opset=target_opset
        )

    def _postprocess(self, onx, roles: dict[str, str], objective: str, notes: list[str]) -> None:
        if objective == "multi:softmax":
            # onnxmltools leaves the class scores untransformed for this objective.
            rewrite_output(onx, name_for_role(roles, PROBABILITIES), "Softmax", axis=1)
            notes.append("multi:softmax: a Softmax turns the class scores into probabilities")

    def _classes(self, model: Any, kind: str, booster) -> tuple:
        return _classes(model, booster)

    def _default_role(self, pyfunc_predict_fn: str | None, kind: str, raw_booster: bool) -> str:
        # Only a raw Booster keeps the softmax kind: its predict returns class indices.
        if kind == _SOFTMAX:
            return LABEL
        return super()._default_role(pyfunc_predict_fn, kind, raw_booster)

    def _categories(self, model: Any, booster) -> dict[str, list]:
        """XGBoost >= 3.1 stores the training categories (``enable_categorical=True``)."""
        types = list(booster.feature_types or [])
        if "c" not in types:
            return {}
        names = _feature_names(booster) or []
        try:
            arrow = booster.get_categories(export_to_arrow=True).to_arrow()
        except (AttributeError, TypeError, ValueError) as e:
            raise UnsupportedModelError(
                f"Cannot convert {_describe(model)}: its categorical features' categories cannot "
                f"be read ({e}); train it with xgboost >= 3.1 on pandas 'category' columns"
            ) from e
        found = {name: values.to_pylist() for name, values in arrow if values is not None}
        return categorical.categories_or_refuse(
            {n: found[n] for n, t in zip(names, types, strict=True) if t == "c"}, _describe(model)
        )

    def _native_input(self, model: Any, sample: pd.DataFrame, io: IOSpec):
        categories = self._categories(model, _booster(model))
        if categories:
            return categorical.native_frame(sample, io.columns, categories)
        frame = sample[io.columns] if io.columns else sample
        # Named models validate column names (as the pyfunc does); nameless ones take an array.
        return frame if _feature_names(_booster(model)) is not None else frame.to_numpy()

    def _booster_reference(self, model: Any, kind: str, x) -> dict[str, np.ndarray]:
        import xgboost

        data = xgboost.DMatrix(x)
        pred = np.asarray(model.predict(data))
        if kind == _SOFTMAX:
            margin = np.asarray(model.predict(data, output_margin=True), dtype=np.float64)
            return {LABEL: pred.astype(np.int64), PROBABILITIES: _softmax(margin)}
        return booster_reference(kind, pred)
