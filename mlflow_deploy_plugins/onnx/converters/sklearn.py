"""scikit-learn -> ONNX with skl2onnx, including the float32 traps and boosters in pipelines."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import (
    LABEL,
    PROBABILITIES,
    VALUE,
    IOSpec,
    spec_inputs_from_columns,
)
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx import optimize
from mlflow_deploy_plugins.onnx.converters import (
    _encoders,
    _missing,
    boosters,
    hist_gradient_boosting,
    sklearn_outputs,
)
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

_logger = logging.getLogger(__name__)

#: ONNX element type of numeric columns that go through preprocessing (see ``_graph_model``).
_FLOAT = "float64"

#: pyfunc_predict_fn values whose output role we know.
_PREDICT_FN_ROLE = {"predict": None, "predict_proba": PROBABILITIES}


class SklearnConverter:
    flavors = ("sklearn",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        from sklearn.base import is_classifier

        boosters.register_sklearn_converters()
        hist_gradient_boosting.register_sklearn_converters()
        _register_float64_imputer()
        check_supported(source.native)
        model, notes = sklearn_outputs.conversion_copy(source.native)
        inputs = _input_bindings(model, sample)
        conv_options = sklearn_outputs.skl2onnx_options(
            model,
            sklearn_outputs.user_converter_options(options.extra, source),
        )
        notes += sklearn_outputs.describe_options(conv_options)
        try:
            onx, loaded = _to_onnx(model, inputs, options, conv_options, notes)
        except ConversionError as e:
            if not any(b.dtype == _FLOAT for b in inputs):
                raise ConversionError(f"{e.message}. {_NOT_A_TOLERANCE}") from e
            # e.g. SimpleImputer: ai.onnx.ml ops onnxruntime only runs on float32
            inputs = tuple(replace(b, dtype="float32") if b.dtype == _FLOAT else b for b in inputs)
            try:
                onx, loaded = _to_onnx(model, inputs, options, conv_options, notes)
            except ConversionError as e32:
                raise ConversionError(_both_failed(e.message, e32.message)) from e32
            notes.append(
                f"float32 inputs: float64 preprocessing did not convert ({e.message}); the "
                "parity gate checks the float32 rounding"
            )

        classifier = is_classifier(model)
        methods = sklearn_outputs.source_methods(model)
        task = sklearn_outputs.task_of(methods, classifier)
        io = IOSpec(inputs=inputs, outputs=(), task=task, extra={"source_methods": methods})
        try:
            reference = self.reference_outputs(source, sample.head(2), io)
        except (ValueError, TypeError) as e:
            from mlflow_deploy_plugins.onnx.convert import sample_rejected

            raise sample_rejected(sample, e) from e
        roles = sklearn_outputs.served_roles(default_roles(onx), methods)
        notes += _narrow_scores(self, source, loaded, onx, roles, reference, sample, io)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, roles, reference),
            task=task,
            classes=tuple(np.asarray(model.classes_).tolist()) if classifier else None,
            default_role=_default_role(source.pyfunc_predict_fn, LABEL in methods),
            extra={
                "source_methods": {r: methods[r] for r in roles.values()},
                **_encoders.refusing_encoders_extra(_column_selector(model), inputs),
            },
        )
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="skl2onnx",
            converter_version=package_version("skl2onnx"),
            notes=notes,
            loaded=loaded,
        )

    def uniform_missing(self, source: SourceModel) -> bool:
        """Whether missing values are accepted in all columns or none (see ``onnx/missing.py``)."""
        return _missing.uniform_missing_handling(list(iter_estimators(source.native)))

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        """What the source computes for every served role (``io.extra["source_methods"]``;
        a twin saved before it was recorded: label/probabilities or value)."""
        model = source.native
        x = _native_input(model, sample, io)
        methods = io.extra.get("source_methods")
        if not methods:
            methods = {LABEL: "predict", PROBABILITIES: "predict_proba"}
            if io.task != "classification" or not hasattr(model, "predict_proba"):
                methods = {LABEL: "predict"} if io.task == "classification" else {VALUE: "predict"}
        return {role: np.asarray(getattr(model, method)(x)) for role, method in methods.items()}


def _narrow_scores(converter, source, loaded, onx, roles, reference, sample, io) -> list[str]:
    """A binary SVC's ``[N, 2]`` decision scores narrowed to the column the source returns
    (``loaded``: the session over ``onx`` as converted)."""
    names = sklearn_outputs.two_column_scores(onx, roles, reference)
    if not names:
        return []
    probe = sample.dropna().head(32)
    if not len(probe):
        return []
    expected = converter.reference_outputs(source, probe, io)[VALUE]
    feed = io.encode_columns({c: probe[c].to_numpy() for c in io.columns}, len(probe))
    return sklearn_outputs.narrow_scores(onx, names, feed, expected, loaded.session)


_NOT_A_TOLERANCE = (
    "This is a limit of the converter, not a tolerance: serve the source model with MLflow or "
    "replace the step named in the error"
)


def _both_failed(float64_message: str, float32_message: str) -> str:
    """One message for a conversion that failed with float64 inputs and again with float32."""
    reason64 = float64_message.split(": ", 1)[-1]
    reason32 = float32_message.split(": ", 1)[-1]
    if reason32 == reason64:
        return f"{float64_message} (with float64 and with float32 inputs). {_NOT_A_TOLERANCE}"
    return f"{float64_message}; with float32 inputs: {reason32}. {_NOT_A_TOLERANCE}"


def _to_onnx(model: Any, inputs, options: ConversionOptions, conv_options: dict, notes: list):
    """skl2onnx, NaN routing like scikit-learn (notes appended), then the graph loaded into
    onnxruntime once: the load check, and the session ``convert()`` optimises and measures.

    Returns:
        (graph, ``optimize.LoadedGraph`` of it)
    """
    from skl2onnx import convert_sklearn

    float64 = any(b.dtype == _FLOAT for b in inputs)
    try:
        onx = convert_sklearn(
            _graph_model(model) if float64 else model,
            initial_types=[(b.name, _tensor_type(b.dtype, b.shape)) for b in inputs],
            target_opset={"": options.target_opset, "ai.onnx.ml": options.ml_opset},
            options=conv_options,
        )
    except Exception as e:  # skl2onnx raises RuntimeError/TypeError/... for its many cases
        raise ConversionError(
            f"skl2onnx could not convert {_describe(model)}: {_short_error(e)}"
        ) from e
    routing = _missing.route_missing_like_sklearn(onx, list(iter_estimators(model)))
    try:
        loaded = optimize.load_graph(onx)
    except ConversionError as e:
        raise ConversionError(
            f"skl2onnx could not convert {_describe(model)}: {_short_error(e.__cause__ or e)}"
        ) from e
    notes += routing
    return onx, loaded


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
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for est in iter_estimators(model):
        if type(est) not in sklearn_operator_name_map:
            names = sorted(
                {
                    c.__name__
                    for c in sklearn_operator_name_map
                    if c.__module__.startswith("sklearn")
                }
            )
            raise UnsupportedModelError(
                f"Cannot convert {type(est).__module__}.{type(est).__name__}: no ONNX converter is "
                "registered for it. Replace it with a supported estimator or serve the source "
                "model with MLflow. Supported scikit-learn estimators include: "
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
    table = selector is not None or hist_gradient_boosting.takes_table(model)
    if table and feature_names is not None:
        # Named columns, possibly mixed numeric/string: one ONNX input per column.
        columns = [str(c) for c in feature_names]
        missing = [c for c in columns if c not in sample.columns]
        if missing:
            raise InvalidInputError(
                f"The sample is missing column(s) {missing} that the model was fitted on "
                f"({columns})"
            )
        imputed = _encoders.imputed_columns(selector)
        dtypes = [table_dtype(sample[c]) for c in columns]
        dtypes = [
            _FLOAT if d in ("bool", "float32") or (d.startswith("int") and c in imputed) else d
            for c, d in zip(columns, dtypes, strict=True)
        ]
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
    dtype = _FLOAT if _float64_preprocessing(model) else "float32"
    return spec_inputs_from_columns(columns, [dtype] * len(columns), per_column=False)


#: Estimators whose distances or likelihoods lose what tells rows apart in float32 once inputs
#: are large (KMeans at 1e8, KNN at 1e15, GaussianNB at 1e20 answered other than the source):
#: fed float64 like scikit-learn computes them (float32 again if that does not convert).
_FLOAT64_MATH = frozenset(
    {"KMeans", "MiniBatchKMeans", "KNeighborsClassifier", "KNeighborsRegressor", "GaussianNB"}
)


def _float64_preprocessing(model: Any) -> bool:
    """True for a Pipeline with steps before its estimator: scikit-learn runs those in float64;
    and for the distance- and likelihood-based estimators of ``_FLOAT64_MATH``."""
    from sklearn.pipeline import Pipeline

    final = sklearn_outputs.final_estimator(model)
    if isinstance(final, hist_gradient_boosting.HGB_TYPES()):
        return True  # it computes in float64 itself (see hist_gradient_boosting.py)
    if type(final).__name__ in _FLOAT64_MATH and type(final).__module__.startswith("sklearn."):
        return True
    return isinstance(model, Pipeline) and len(_active_steps(model)) > 1


def _active_steps(pipeline: Any) -> list:
    return [(n, s) for n, s in pipeline.steps if s not in (None, "passthrough")]


def _graph_model(model: Any) -> Any:
    """The model skl2onnx converts: float64 preprocessing, float32 into the final estimator.

    A float32 trap: scikit-learn scales in float64 and a tree casts the result to float32; an
    ONNX graph fed float32 scales in float32, is off by an ulp and flips splits whose threshold
    sits next to a training value. So the preprocessing steps get float64 inputs (see
    ``_input_bindings``) and a Cast to float32 is inserted before a non-linear final estimator,
    which is exactly what scikit-learn does. Linear models compute in float64 end to end.
    """
    from skl2onnx.sklapi import CastTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or not _float64_preprocessing(model):
        return model
    steps = _active_steps(model)
    final = steps[-1][1]
    if type(final).__module__.startswith("sklearn.linear_model") or isinstance(
        final, hist_gradient_boosting.HGB_TYPES()
    ):
        return Pipeline(steps)
    return Pipeline(
        [*steps[:-1], ("onnx_cast_float32", CastTransformer(dtype=np.float32)), steps[-1]]
    )


_imputer_registered = False


def _register_float64_imputer() -> None:
    """SimpleImputer on float64 inputs: skl2onnx emits ai.onnx.ml Imputer, which onnxruntime runs
    on float32 only; IsNaN + Where in float64 replaces exactly what scikit-learn replaces."""
    global _imputer_registered
    if _imputer_registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    update_registered_converter(
        SimpleImputer,
        "SklearnSimpleImputer",
        calculate_sklearn_imputer_output_shapes,
        _convert_simple_imputer,
    )
    _imputer_registered = True


def _convert_simple_imputer(scope, operator, container):
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    imputer = operator.raw_operator
    stats = np.asarray(getattr(imputer, "statistics_", []))
    missing = imputer.missing_values
    if (
        not isinstance(operator.inputs[0].type, DoubleTensorType)
        or not (isinstance(missing, float) and np.isnan(missing))
        or getattr(imputer, "add_indicator", False)
        or stats.dtype.kind not in "fiu"
        or np.isnan(stats.astype(np.float64)).any()  # dropped all-NaN columns
    ):
        return convert_sklearn_imputer(scope, operator, container)
    features = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("fill_values")
    container.add_initializer(
        fill, TensorProto.DOUBLE, [1, len(stats)], stats.astype(np.float64).tolist()
    )
    is_nan = scope.get_unique_variable_name("is_nan")
    container.add_node("IsNaN", [features], [is_nan], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where",
        [is_nan, fill, features],
        [operator.outputs[0].full_name],
        name=scope.get_unique_operator_name("Where"),
    )


def _short_error(e: Exception) -> str:
    """skl2onnx errors can dump whole node attribute tables: keep the first line and the cause."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"
    cause = e.__cause__  # not __context__: the first attempt's error when retrying
    if cause is not None and str(cause) and str(cause).splitlines()[0][:300] not in first:
        text += f" (caused by {type(cause).__name__}: {str(cause).splitlines()[0][:300]})"
    return text


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


def _native_input(model: Any, sample: pd.DataFrame, io: IOSpec):
    if getattr(model, "feature_names_in_", None) is not None or _column_selector(model) is not None:
        return sample[io.columns] if io.columns else sample
    return sample[io.columns].to_numpy() if io.columns else sample.to_numpy()


def _default_role(pyfunc_predict_fn: str | None, labels: bool) -> str:
    role = _PREDICT_FN_ROLE.get(pyfunc_predict_fn or "predict")
    if role:
        return role
    return LABEL if labels else VALUE


def _describe(model: Any) -> str:
    """The model's class path; a Pipeline with its steps' class paths."""
    from sklearn.pipeline import Pipeline

    def path(est: Any) -> str:
        return f"{type(est).__module__}.{type(est).__name__}"

    if isinstance(model, Pipeline):
        return f"{path(model)}(" + ", ".join(path(s) for _, s in model.steps) + ")"
    return path(model)
