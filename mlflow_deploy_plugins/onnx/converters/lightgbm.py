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

from mlflow_deploy_plugins.errors import ConversionError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters._graph import (
    default_roles,
    outputs_from_graph,
)
from mlflow_deploy_plugins.onnx.converters._trees import (
    BINARY,
    MULTICLASS,
    RANKING,
    REGRESSION,
    booster_reference,
    clamp_opset,
    default_role,
    dynamic_batch,
    matrix_inputs,
    name_for_role,
    positive_class_probability,
)
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)
from mlflow_deploy_plugins.serving.iospec import (
    LABEL,
    PROBABILITIES,
    VALUE,
    IOSpec,
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


class LightGBMConverter:
    flavors = ("lightgbm",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = source.native
        kind, objective = _kind(model)
        booster = _booster(model)
        inputs, notes = matrix_inputs(
            _real_feature_names(booster.feature_name()),
            booster.num_feature(),
            sample,
            _describe(model),
            strict_names=False,
        )
        opset, opset_notes = clamp_opset(options.target_opset)
        try:
            onx = convert_lightgbm(
                _convertible(model, objective),
                initial_types=[(inputs[0].name, FloatTensorType([None, len(inputs[0].columns)]))],
                target_opset=opset,
                zipmap=False,
            )
        except Exception as e:  # onnxmltools raises RuntimeError/NotImplementedError/...
            raise ConversionError(
                f"onnxmltools could not convert {_describe(model)} (objective {objective!r}): "
                f"{type(e).__name__}: {e}"
            ) from e
        dynamic_batch(onx)
        roles = default_roles(onx)
        raw_booster = _is_booster(model)
        if raw_booster and kind == BINARY:
            positive_class_probability(onx, name_for_role(roles, PROBABILITIES))
            notes.append(
                "binary Booster: the probabilities output is P(class=1), shape [N], "
                "as Booster.predict returns it"
            )

        classifier = kind in (BINARY, MULTICLASS)
        task = "classification" if classifier else "other" if kind == RANKING else "regression"
        io = IOSpec(inputs=inputs, outputs=(), task=task)
        reference = self.reference_outputs(source, sample.head(2), io)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, roles, reference),
            task=task,
            classes=_classes(model, kind) if classifier else None,
            default_role=default_role(source.pyfunc_predict_fn, kind, raw_booster),
        )
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="onnxmltools",
            converter_version=package_version("onnxmltools"),
            notes=[*notes, *opset_notes, *(["converted with zipmap=False"] if classifier else [])],
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        model = source.native
        kind, _ = _kind(model)
        x = _native_input(_booster(model).feature_name(), sample, io)
        if _is_booster(model):
            pred = np.asarray(model.predict(x))
            return booster_reference(kind, pred)
        if kind in (BINARY, MULTICLASS):
            return {
                LABEL: np.asarray(model.predict(x)),
                PROBABILITIES: np.asarray(model.predict_proba(x)),
            }
        return {VALUE: np.asarray(model.predict(x))}


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
