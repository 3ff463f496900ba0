"""scikit-learn -> ONNX with skl2onnx, including the float32 traps and boosters in pipelines."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters import boosters
from mlflow_deploy_plugins.onnx.converters._graph import (
    default_roles,
    outputs_from_graph,
    table_dtype,
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
    spec_inputs_from_columns,
)

_logger = logging.getLogger(__name__)

#: pyfunc_predict_fn values whose output role we know.
_PREDICT_FN_ROLE = {"predict": None, "predict_proba": PROBABILITIES}


class SklearnConverter:
    flavors = ("sklearn",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        from skl2onnx import convert_sklearn
        from sklearn.base import is_classifier

        model = source.native
        boosters.register_sklearn_converters()
        check_supported(model)
        inputs = _input_bindings(model, sample)
        conv_options = _converter_options(model)
        try:
            onx = convert_sklearn(
                model,
                initial_types=[(b.name, _tensor_type(b.dtype, b.shape)) for b in inputs],
                target_opset={"": options.target_opset, "ai.onnx.ml": options.ml_opset},
                options=conv_options,
            )
        except Exception as e:  # skl2onnx raises RuntimeError/TypeError/... for its many cases
            raise ConversionError(
                f"skl2onnx could not convert {_describe(model)}: {type(e).__name__}: {e}"
            ) from e

        classifier = is_classifier(model)
        io = IOSpec(
            inputs=inputs, outputs=(), task="classification" if classifier else "regression"
        )
        reference = self.reference_outputs(source, sample.head(2), io)
        roles = default_roles(onx)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, roles, reference),
            task=io.task,
            classes=tuple(np.asarray(model.classes_).tolist()) if classifier else None,
            default_role=_default_role(source.pyfunc_predict_fn, classifier),
        )
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="skl2onnx",
            converter_version=package_version("skl2onnx"),
            notes=_notes(conv_options),
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        model = source.native
        x = _native_input(model, sample, io)
        if io.task == "classification":
            out = {LABEL: np.asarray(model.predict(x))}
            if hasattr(model, "predict_proba"):
                out[PROBABILITIES] = np.asarray(model.predict_proba(x))
            return out
        return {VALUE: np.asarray(model.predict(x))}


# --------------------------------------------------------------------------- model inspection
def iter_estimators(model: Any):
    """Yield every estimator in a (nested) Pipeline / ColumnTransformer / FeatureUnion."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    yield model
    if isinstance(model, Pipeline):
        for _, step in model.steps:
            if step not in (None, "passthrough"):
                yield from iter_estimators(step)
    elif isinstance(model, ColumnTransformer):
        fitted = getattr(model, "transformers_", model.transformers)
        for _, trans, _ in fitted:
            if not isinstance(trans, str):
                yield from iter_estimators(trans)
    elif isinstance(model, FeatureUnion):
        for _, trans in model.transformer_list:
            if not isinstance(trans, str):
                yield from iter_estimators(trans)


def check_supported(model: Any) -> None:
    """Fail early, naming the first estimator skl2onnx has no converter for."""
    from skl2onnx import supported_converters
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for est in iter_estimators(model):
        if type(est) not in sklearn_operator_name_map:
            names = sorted(
                c.__name__
                for c in supported_converters(from_sklearn=True)
                if hasattr(c, "__name__")
            )
            raise UnsupportedModelError(
                f"Cannot convert {type(est).__module__}.{type(est).__name__}: no ONNX converter is "
                f"registered for it. Supported scikit-learn estimators include: "
                f"{', '.join(names[:60])}{' ...' if len(names) > 60 else ''}; plus LightGBM and "
                "XGBoost models (install the matching extra)."
            )


def _column_selector(model: Any):
    """The ColumnTransformer at the model's entry, if any."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[0][1]
    return model if isinstance(model, ColumnTransformer) else None


def _input_bindings(model: Any, sample: pd.DataFrame):
    selector = _column_selector(model)
    feature_names = getattr(model, "feature_names_in_", None)
    if selector is not None and feature_names is not None:
        # Named columns, possibly mixed numeric/string: one ONNX input per column.
        columns = [str(c) for c in feature_names]
        missing = [c for c in columns if c not in sample.columns]
        if missing:
            raise InvalidInputError(
                f"The sample is missing column(s) {missing} that the model was fitted on "
                f"({columns})"
            )
        dtypes = [table_dtype(sample[c]) for c in columns]
        dtypes = ["float32" if d == "bool" else d for d in dtypes]
        return spec_inputs_from_columns(columns, dtypes, per_column=True)
    if feature_names is not None:
        columns = [str(c) for c in feature_names]
    else:
        n = getattr(model, "n_features_in_", None) or sample.shape[1]
        columns = (
            [str(c) for c in sample.columns][:n]
            if sample.shape[1] >= n
            else [f"f{i}" for i in range(n)]
        )
    missing = [c for c in columns if c not in sample.columns]
    if missing and feature_names is not None:
        raise InvalidInputError(
            f"The sample is missing column(s) {missing} that the model was fitted on ({columns})"
        )
    non_numeric = [c for c in columns if c in sample.columns and table_dtype(sample[c]) == "string"]
    if non_numeric:
        raise InvalidInputError(
            f"Column(s) {non_numeric} hold strings but {_describe(model)} takes one numeric "
            "matrix; a string column needs an encoder (e.g. OneHotEncoder in a ColumnTransformer)"
        )
    return spec_inputs_from_columns(columns, ["float32"] * len(columns), per_column=False)


def _tensor_type(dtype: str, shape):
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    cls = {
        "float32": FloatTensorType,
        "float64": DoubleTensorType,
        "int64": Int64TensorType,
        "string": StringTensorType,
        "bool": BooleanTensorType,
    }[dtype]
    return cls([None, *shape[1:]])


def _converter_options(model: Any) -> dict:
    """ZipMap off for every classifier; exact division in scalers (float32 split flips)."""
    from sklearn.base import is_classifier
    from sklearn.preprocessing import StandardScaler

    options: dict = {}
    for est in iter_estimators(model):
        if is_classifier(est) and hasattr(est, "predict_proba"):
            options[id(est)] = {"zipmap": False}
        if isinstance(est, StandardScaler):
            options[id(est)] = {"div": "div"}
    return options


def _notes(options: dict) -> list[str]:
    notes = []
    if any(o.get("div") == "div" for o in options.values()):
        notes.append(
            "StandardScaler converted with div='div' (exact division, float32 split safety)"
        )
    if any(o.get("zipmap") is False for o in options.values()):
        notes.append("classifier converted with zipmap=False (probabilities as a tensor)")
    return notes


def _native_input(model: Any, sample: pd.DataFrame, io: IOSpec):
    if getattr(model, "feature_names_in_", None) is not None or _column_selector(model) is not None:
        return sample[io.columns] if io.columns else sample
    return sample[io.columns].to_numpy() if io.columns else sample.to_numpy()


def _default_role(pyfunc_predict_fn: str | None, classifier: bool) -> str:
    role = _PREDICT_FN_ROLE.get(pyfunc_predict_fn or "predict")
    if role:
        return role
    return LABEL if classifier else VALUE


def _describe(model: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        return "Pipeline(" + ", ".join(type(s).__name__ for _, s in model.steps) + ")"
    return type(model).__name__
