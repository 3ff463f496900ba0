"""LightGBM -> ONNX with onnxmltools: Boosters from ``lgb.train`` and the scikit-learn API models.

What the ONNX graph returns follows what the MLflow ``lightgbm`` pyfunc returns, which is
``model.predict(df)``:

* ``LGBMClassifier``: labels (default role ``label``), probabilities available.
* ``LGBMRegressor`` / ``LGBMRanker``: values.
* ``Booster`` with a ``binary`` objective: ``Booster.predict`` is P(class=1), a 1-D array. The
  graph's ``probabilities`` output is rewritten to that column (shape ``[N]``), and it is the
  default role; ``label`` (``p > 0.5``) stays available.
* ``Booster`` with a ``multiclass`` objective: the ``[N, k]`` probability matrix (default role
  ``probabilities``), ``label`` = argmax.
* ``Booster`` with a regression or ranking objective: values.

Helpers shared with the XGBoost converter live in ``_trees.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.errors import UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters import categorical
from mlflow_deploy_plugins.onnx.converters._trees import (
    BINARY,
    MULTICLASS,
    RANKING,
    REGRESSION,
    OnnxmltoolsTreeConverter,
)

_logger = logging.getLogger(__name__)


#: LightGBM objectives (canonical names, as ``dump_model`` spells them) onnxmltools converts right.
_OBJECTIVE_KIND = {
    "binary": BINARY,
    "multiclass": MULTICLASS,
    "regression": REGRESSION,
    "regression_l1": REGRESSION,
    "huber": REGRESSION,
    "quantile": REGRESSION,
    "poisson": REGRESSION,
    "gamma": REGRESSION,
    "tweedie": REGRESSION,
    "lambdarank": RANKING,
    "rank_xendcg": RANKING,
}


# --------------------------------------------------------------------------- model inspection
def _is_booster(model: Any) -> bool:
    import lightgbm

    return isinstance(model, lightgbm.Booster)


def _booster(model: Any):
    return model if _is_booster(model) else model.booster_


def _kind(model: Any) -> tuple[str, str]:
    """(kind, canonical objective); UnsupportedModelError for what onnxmltools gets wrong."""
    from lightgbm import LGBMClassifier, LGBMRanker, LGBMRegressor

    if not (_is_booster(model) or isinstance(model, (LGBMClassifier, LGBMRegressor, LGBMRanker))):
        raise UnsupportedModelError(
            f"Cannot convert {type(model).__module__}.{type(model).__name__} with the LightGBM "
            "converter: expected a lightgbm Booster, LGBMClassifier, LGBMRegressor or LGBMRanker"
        )
    try:
        booster = _booster(model)
        tokens = str(booster.dump_model(num_iteration=1).get("objective", "")).split()
    except Exception as e:  # an unfitted sklearn model raises LightGBMError / NotFittedError
        raise UnsupportedModelError(
            f"Cannot read the objective of {_describe(model)} (is it fitted?): {e}"
        ) from e
    objective = tokens[0] if tokens else "custom"
    kind = _OBJECTIVE_KIND.get(objective)
    if kind is None:
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)} with objective {objective!r}: onnxmltools supports "
            f"LightGBM objectives {', '.join(sorted(_OBJECTIVE_KIND))} (custom objectives, "
            "multiclassova and cross_entropy are not supported)"
        )
    if "sqrt" in tokens[1:]:
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)}: reg_sqrt=True is not supported by onnxmltools"
        )
    if booster.params.get("linear_tree"):
        raise UnsupportedModelError(
            f"Cannot convert {_describe(model)}: linear_tree=True is not supported by onnxmltools"
        )
    return kind, objective


def _convertible(model: Any, objective: str) -> Any:
    """onnxmltools reads a Booster's objective from ``params``, where aliases ('l1', 'mse', ...)
    survive from ``lgb.train``; hand it a copy spelling the canonical name."""
    import lightgbm

    if not _is_booster(model) or model.params.get("objective") in (None, objective):
        return model
    copy = lightgbm.Booster(model_str=model.model_to_string())
    copy.params = {**model.params, "objective": objective}
    return copy


def _real_feature_names(names) -> list[str] | None:
    """Feature names the model was fitted with, None when LightGBM made them up (Column_i)."""
    if not names:
        return None
    names = [str(n) for n in names]
    if names == [f"Column_{i}" for i in range(len(names))]:
        return None
    return names


def _classes(model: Any, kind: str) -> tuple:
    if _is_booster(model):
        n = 2 if kind == BINARY else int(model.dump_model(num_iteration=1)["num_class"])
        return tuple(range(n))
    return tuple(np.asarray(model.classes_).tolist())


def _native_input(feature_names, sample: pd.DataFrame, io: IOSpec):
    """A frame when the model knows these column names, else a positional array."""
    names = _real_feature_names(feature_names)
    frame = sample[io.columns] if io.columns else sample
    return frame if names == list(io.columns) else frame.to_numpy()


def _describe(model: Any) -> str:
    return f"lightgbm.{type(model).__name__}"


# --------------------------------------------------------------------------- the converter
class LightGBMConverter(OnnxmltoolsTreeConverter):
    flavors = ("lightgbm",)
    strict_names = False  # LightGBM reads columns by position
    classifier_notes = ("converted with zipmap=False",)

    _is_booster = staticmethod(_is_booster)
    _booster = staticmethod(_booster)
    _kind = staticmethod(_kind)
    _describe = staticmethod(_describe)

    def _feature_names(self, booster) -> list[str] | None:
        return _real_feature_names(booster.feature_name())

    def _num_features(self, booster) -> int:
        return booster.num_feature()

    def _onnxmltools_convert(self, model: Any, objective: str, initial_types, target_opset: int):
        from onnxmltools import convert_lightgbm

        return convert_lightgbm(
            _convertible(model, objective),
            initial_types=initial_types,
            target_opset=target_opset,
            zipmap=False,
        )

    def _classes(self, model: Any, kind: str, booster) -> tuple:
        return _classes(model, kind)

    def _native_input(self, model: Any, sample: pd.DataFrame, io: IOSpec):
        booster = _booster(model)
        categories = self._categories(model, booster)
        if categories:
            return categorical.native_frame(sample, io.columns, categories)
        return _native_input(booster.feature_name(), sample, io)

    def _categories(self, model: Any, booster) -> dict[str, list]:
        """LightGBM keeps ``pandas_categorical`` (the categories of each category column, in
        column order); the dump marks which features are categorical."""
        found = getattr(booster, "pandas_categorical", None) or []
        if not found:
            return {}
        infos = booster.dump_model(num_iteration=1).get("feature_infos", {})
        names = booster.feature_name()
        cat_columns = [
            n for n in names if isinstance(infos.get(n), dict) and infos[n].get("values")
        ]
        if len(cat_columns) != len(found):
            raise UnsupportedModelError(
                f"Cannot convert {_describe(model)}: it lists {len(found)} pandas categorical "
                f"column(s) but {len(cat_columns)} categorical feature(s) {cat_columns}; train it "
                "on a DataFrame whose categorical columns have the pandas 'category' dtype"
            )
        return categorical.categories_or_refuse(
            dict(zip(cat_columns, found, strict=True)), _describe(model)
        )
