"""Model URI -> verified ONNX: load the source, convert, optimise, gate on parity, sample.

``convert()`` is the one pipeline behind ``mlflow_deploy_plugins.convert``, ``promote`` and the
``mlflow-deploy convert`` command; it registers nothing.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.constants import FLAVOR_NAME, NAMED_COLUMNS, POSITIONAL_COLUMNS
from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, IOSpec
from mlflow_deploy_plugins.errors import (
    ConversionError,
    InvalidInputError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from mlflow_deploy_plugins.onnx import missing, optimize, parity
from mlflow_deploy_plugins.onnx.converters.base import ConversionOptions, SourceModel
from mlflow_deploy_plugins.onnx.outputs import source_like_outputs
from mlflow_deploy_plugins.onnx.sample import resolve_sample

_logger = logging.getLogger(__name__)


#: source flavor -> "module:Class"; the first flavor of a model found here wins, in this order.
CONVERTERS = {
    FLAVOR_NAME: "mlflow_deploy_plugins.onnx.converters.onnx_passthrough:OnnxPassthroughConverter",
    "onnx": "mlflow_deploy_plugins.onnx.converters.onnx_passthrough:OnnxPassthroughConverter",
    "sklearn": "mlflow_deploy_plugins.onnx.converters.sklearn:SklearnConverter",
    "lightgbm": "mlflow_deploy_plugins.onnx.converters.lightgbm:LightGBMConverter",
    "xgboost": "mlflow_deploy_plugins.onnx.converters.xgboost:XGBoostConverter",
    "pytorch": "mlflow_deploy_plugins.onnx.converters.torch:TorchConverter",
    "tensorflow": "mlflow_deploy_plugins.onnx.converters.tensorflow:TensorFlowConverter",
}
_LOADERS = {
    FLAVOR_NAME: "mlflow.onnx",
    "onnx": "mlflow.onnx",
    "sklearn": "mlflow.sklearn",
    "lightgbm": "mlflow.lightgbm",
    "xgboost": "mlflow.xgboost",
    "pytorch": "mlflow.pytorch",
    "tensorflow": "mlflow.tensorflow",
}
DEFAULT_REFERENCE_ROWS = 10_000


@dataclass
class ConversionResult:
    """Everything the flavor saves: the model, its IO contract and the evidence."""

    source: SourceModel
    onnx_model: Any
    io: IOSpec
    converter: str
    converter_version: str
    options: ConversionOptions
    parity: parity.ParityReport
    optimization: optimize.OptimizationReport
    reference_sample: pd.DataFrame
    sample_frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    #: opsets of the converter's graph (the saved, optimised graph may import more domains)
    opsets: dict[str, int] = field(default_factory=dict)
    #: onnxruntime's session over ``onnx_model`` (the gate's): ``save`` runs the input example
    #: with it instead of loading the graph again
    session: Any = field(default=None, repr=False, compare=False)

    def save(self, path: str, **kwargs) -> None:
        from mlflow_deploy_plugins.onnx.flavor import save_model

        save_model(self, path, **kwargs)


def get_converter(flavor: str):
    target = CONVERTERS.get(flavor)
    if target is None:
        raise UnsupportedModelError(
            f"No converter for flavor '{flavor}'. Supported flavors: {', '.join(CONVERTERS)}"
        )
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnsupportedModelError(
            f"The '{flavor}' converter needs a package that is not installed ({e.name}); "
            f"install mlflow-deploy-plugins[{_extra_for(flavor)}]"
        ) from e
    return getattr(module, cls_name)()


def _extra_for(flavor: str) -> str:
    return {"pytorch": "torch"}.get(flavor, flavor)


def load_source(model_uri: str) -> SourceModel:
    """Download the model, pick the flavor to convert from and load its native object."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        local_path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
        mlmodel = Model.load(local_path)
    except MlflowException as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be resolved: {e.message}") from e
    except OSError as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be read: {e}") from e
    flavor = next((f for f in CONVERTERS if f in mlmodel.flavors), None)
    if flavor is None:
        raise UnsupportedModelError(
            f"Model '{model_uri}' has flavors {sorted(mlmodel.flavors)}; none can be converted. "
            f"Supported flavors: {', '.join(k for k in CONVERTERS if k != FLAVOR_NAME)}"
        )
    loader = importlib.import_module(_LOADERS[flavor])
    try:
        native = loader.load_model(local_path)
    except Exception as e:
        _raise_load_error(model_uri, flavor, e)
    pyfunc_conf = mlmodel.flavors.get("python_function", {})
    name, version = _registered_name_version(model_uri)
    return SourceModel(
        model_uri=model_uri,
        flavor=flavor,
        native=native,
        local_path=local_path,
        flavor_conf=mlmodel.flavors[flavor],
        pyfunc_predict_fn=pyfunc_conf.get("predict_fn", "predict"),
        signature=mlmodel.signature,
        run_id=mlmodel.run_id,
        model_name=name,
        model_version=version,
        metadata=mlmodel.metadata or {},
    )


def _raise_load_error(model_uri: str, flavor: str, error: Exception):
    """Translate a flavor loader's failure into our errors (always raises)."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, ImportError):
        raise UnsupportedModelError(
            f"Loading the '{flavor}' model needs {error.name}; install "
            f"mlflow-deploy-plugins[{_extra_for(flavor)}]"
        ) from error
    if isinstance(error, MlflowException):
        raise error
    if type(error).__name__ == "ValidationError" and flavor in ("onnx", FLAVOR_NAME):
        raise ConversionError(f"Model '{model_uri}' is not a valid ONNX model: {error}") from error
    raise ConversionError(
        f"Could not load the '{flavor}' model of '{model_uri}': {type(error).__name__}: {error}"
    ) from error


def _registered_name_version(model_uri: str):
    if not model_uri.startswith("models:/"):
        return None, None
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    try:
        resolved = get_model_name_and_version(MlflowClient(), model_uri)
    except Exception:
        return None, None
    # a models:/<model_id> URI of a logged model resolves to (model_id,): no registered name
    if len(resolved) != 2:
        return None, None
    name, version = resolved
    return name, str(version)  # an alias resolves to an int version


def convert(
    model_uri: str,
    *,
    sample=None,
    atol: float = parity.DEFAULT_ATOL,
    rtol: float = parity.DEFAULT_RTOL,
    min_label_agreement: float = parity.DEFAULT_MIN_LABEL_AGREEMENT,
    quantize: bool = False,
    target_opset: int | None = None,
    reference_rows: int = DEFAULT_REFERENCE_ROWS,
    source: SourceModel | None = None,
) -> ConversionResult:
    """Convert ``model_uri`` to ONNX and prove it predicts like the source.

    Args:
        model_uri: ``models:/name/version``, ``models:/name@alias``, ``runs:/...`` or a path.
        sample: validation data (DataFrame, 2-D array, dict of columns or a file path); defaults
            to the run's logged dataset, then 1,000 rows synthesized from the input example.
        atol, rtol: tolerances on probabilities and values.
        min_label_agreement: minimum share of identical labels for classifiers.
        quantize: also apply dynamic int8 quantisation (checked by the gate again).
        target_opset: ONNX opset (default 17).
        reference_rows: at most this many sample rows are kept as the reference sample.

    Returns:
        A ConversionResult; ``.save(path)`` writes an MLflow model of our flavor.

    Raises:
        ParityError: the ONNX model does not match the source within the tolerances.
    """
    tolerances = parity.Tolerances(atol, rtol, min_label_agreement)
    if reference_rows < 1:
        raise InvalidInputError(f"reference_rows must be >= 1, got {reference_rows}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    source = source or load_source(model_uri)
    resolved = resolve_sample(source, sample)
    frame = resolved.frame
    options = ConversionOptions(
        **({"target_opset": target_opset} if target_opset else {}),
        extra={"quantize": bool(quantize)},
    )
    converter = get_converter(source.flavor)
    _logger.info("Converting %s (%s flavor) ...", model_uri, source.flavor)
    t1 = time.perf_counter()
    converted = converter.convert(source, frame, options)
    io = converted.io
    if takes_one_tensor(source, io):
        io.extra[POSITIONAL_COLUMNS] = True
    elif _names_columns(source):
        io.extra[NAMED_COLUMNS] = True
    timings["load_s"], timings["convert_s"] = t1 - t0, time.perf_counter() - t1

    t2 = time.perf_counter()
    reference = _source_outputs(converter, source, frame, io)
    io, served_notes = served_io(io, reference)
    # the probe asks the SOURCE: our own encoding must not refuse the missing values for it
    probe_io = replace(io, accepts_missing=tuple(io.columns))
    t_probe = time.perf_counter()
    uniform = getattr(converter, "uniform_missing", None)
    accepts, missing_notes = missing.probe_accepts_missing(
        lambda rows: converter.reference_outputs(source, rows, probe_io),
        frame,
        io,
        uniform=bool(uniform and uniform(source)),
    )
    infinite_io = replace(probe_io, accepts_infinite=True)
    accepts_infinite, infinite_notes = missing.probe_accepts_infinite(
        lambda rows: converter.reference_outputs(source, rows, infinite_io), frame, io
    )
    missing_notes = [*missing_notes, *infinite_notes]
    timings["missing_probe_s"] = time.perf_counter() - t_probe
    io = replace(io, accepts_missing=accepts, accepts_infinite=accepts_infinite)
    nan_rows = missing.missing_value_rows(frame, io)
    if len(nan_rows):
        nan_reference = _source_outputs(converter, source, nan_rows, io)
        gate_frame = pd.concat([frame, nan_rows], ignore_index=True)
        gate_reference = _stacked(reference, nan_reference)
    else:
        gate_frame, gate_reference = frame, reference
    baseline = converted.onnx_model
    # one onnxruntime session per graph: the converter's own load check is reused when it
    # still holds this graph; the optimised graph's session serves gate, latency and sample
    loaded = converted.loaded
    if loaded is None or not loaded.same_graph(baseline):
        loaded = optimize.load_graph(baseline)
    model = loaded.optimized
    variant = f"optimized:{optimize.SAVED_LEVEL}"
    if quantize:
        model = optimize.quantize_int8(model)
        variant += "+int8"
    model, output_notes = source_like_outputs(model, io, gate_reference)
    served_notes = [*served_notes, *output_notes]
    served = optimize.served_session(model)
    gate_outputs = parity.onnx_outputs(served, io, gate_frame, estimator_path(source.native))

    def gate(expected: dict, n_missing: int) -> parity.ParityReport:
        rows = len(gate_frame) - len(nan_rows) + n_missing  # the sample's rows come first
        return parity.compare(
            expected,
            {role: values[:rows] for role, values in gate_outputs.items()},
            io,
            tolerances,
            variant=variant,
            sample_origin=resolved.origin,
            small_sample=resolved.small,
            missing_value_rows=n_missing,
        )

    report = gate(gate_reference, len(nan_rows))
    if not report.passed and len(nan_rows) and gate(reference, 0).passed:
        report.structural = parity.missing_semantics_failure(report)
    report.notes.extend([*resolved.notes, *converted.notes, *served_notes, *missing_notes])
    timings["parity_s"] = time.perf_counter() - t2
    parity.enforce(report, estimator_path(source.native))

    def feed_for(rows: int):
        chunk = pd.concat([frame] * (rows // len(frame) + 1)).head(rows)
        return io.encode_columns({c: chunk[c].to_numpy() for c in io.columns})

    optimization = optimize.make_report(
        optimize.SAVED_LEVEL,
        quantize,
        optimize.measure(loaded.session, len(loaded.data), feed_for, repeats=20),
        optimize.measure(served, model.ByteSize(), feed_for, repeats=20),
    )
    picked = reference_rows_of(frame, reference_rows)
    reference_sample = reference_frame(
        frame, io, picked, {role: np.asarray(v)[picked] for role, v in gate_outputs.items()}
    )
    timings["total_s"] = time.perf_counter() - t0
    _logger.info("%s (%.2fs)", report.summary(), timings["total_s"])
    return ConversionResult(
        source=source,
        onnx_model=model,
        io=io,
        converter=converted.converter,
        converter_version=converted.converter_version,
        options=options,
        parity=report,
        optimization=optimization,
        reference_sample=reference_sample,
        sample_frame=frame,
        notes=[*converted.notes, *served_notes, *missing_notes],
        timings=timings,
        opsets={(o.domain or "ai.onnx"): o.version for o in baseline.opset_import},
        session=served,
    )


def takes_one_tensor(source: SourceModel, io: IOSpec) -> bool:
    """The source's signature is tensor-based and the graph takes one numeric matrix: MLflow
    feeds such a model ``DataFrame.to_numpy()``, whatever the column labels, so we take columns
    by position too (and the twin keeps taking arrays)."""
    inputs = _signature_inputs(source)
    return (
        inputs is not None
        and inputs.is_tensor_spec()
        and len(io.inputs) == 1
        and io.inputs[0].dtype != "string"
    )


def _names_columns(source: SourceModel) -> bool:
    """The source's signature is column-based (named columns): MLflow's scoring server refuses
    rows of bare values for it."""
    inputs = _signature_inputs(source)
    return inputs is not None and not inputs.is_tensor_spec()


def _signature_inputs(source: SourceModel):
    """The source's MLflow signature inputs (a Schema), or None without a signature."""
    return getattr(getattr(source, "signature", None), "inputs", None)


def served_io(io: IOSpec, reference: dict) -> tuple[IOSpec, list[str]]:
    """``io`` serving only the outputs the source produces, each typed like the source's.

    An output the source cannot produce (``predict_proba`` of a model without it: decision
    scores, ZipMap sequences) is not served; zero outputs left fails the gate.
    """
    kept, notes = [], []
    for out in io.outputs:
        if out.role not in reference:
            notes.append(
                f"output '{out.name}' ({out.role}) not served: the source model has no "
                f"'{out.role}' to compare it with"
            )
            continue
        dtype = np.asarray(reference[out.role]).dtype
        kept.append(replace(out, source_dtype="object" if dtype.kind in "OUS" else dtype.name))
    return replace(io, outputs=tuple(kept)), notes


def estimator_path(native) -> str:
    """The source estimator's class path (a pipeline's final step named too), for refusals."""
    cls = type(native)
    path = f"{cls.__module__}.{cls.__qualname__}"
    steps = getattr(native, "steps", None)
    if steps:
        last = type(steps[-1][1])
        path += f" (final step {last.__module__}.{last.__qualname__})"
    return path


def _stacked(first: dict, second: dict) -> dict:
    """Two reference output dicts (same roles) as one, rows of ``first`` first."""
    return {
        role: np.concatenate([np.asarray(first[role]), np.asarray(second[role])])
        for role in first
        if role in second
    }


def _source_outputs(converter, source, frame: pd.DataFrame, io: IOSpec) -> dict:
    """The source's predictions; its own input errors (NaN, types) become clear errors."""
    try:
        return converter.reference_outputs(source, frame, io)
    except (ValueError, TypeError) as e:
        raise sample_rejected(frame, e) from e


def sample_rejected(frame: pd.DataFrame, error: Exception) -> InvalidInputError:
    """The error to raise when the SOURCE model's own predict refuses the sample."""
    nan_cols = [c for c in frame.columns if frame[c].isna().any()]
    if nan_cols:
        return InvalidInputError(
            f"The source model rejects the sample: column(s) {nan_cols} contain NaN and the "
            f"model has no imputer for them ({type(error).__name__}: {error})"
        )
    return InvalidInputError(f"The source model rejects the sample: {error}")


def reference_rows_of(frame: pd.DataFrame, rows: int) -> np.ndarray:
    """Positions of a bounded uniform sample of ``frame``'s rows (all of them when it fits)."""
    if len(frame) <= rows:
        return np.arange(len(frame))
    return np.random.RandomState(0).permutation(len(frame))[:rows]


def build_reference_sample(model_bytes: bytes, io: IOSpec, frame: pd.DataFrame, rows: int):
    """A bounded uniform sample of the inputs plus the model's predictions on them."""
    from mlflow_deploy_plugins.core.session import make_session

    picked = reference_rows_of(frame, rows)
    sample = frame.iloc[picked]
    outputs = parity.onnx_outputs(make_session(model_bytes, level="all"), io, sample)
    return reference_frame(frame, io, picked, outputs)


def reference_frame(frame: pd.DataFrame, io: IOSpec, picked: np.ndarray, outputs: dict):
    """The rows ``picked`` of ``frame`` (model columns) with the predictions ``outputs`` on them,
    one column per class probability / value column."""
    sample = frame.iloc[picked][io.columns].reset_index(drop=True)
    predictions = {}
    for role, values in outputs.items():
        values = np.asarray(values)
        if role == PROBABILITIES and values.ndim == 2:
            labels = io.classes or range(values.shape[1])
            for i, cls in enumerate(labels):
                predictions[f"proba_{cls}"] = values[:, i]
        elif role in (LABEL, "value") and values.ndim <= 2:
            flat = values.reshape(len(sample), -1)
            if flat.shape[1] == 1:
                predictions["prediction"] = flat[:, 0]
            else:
                for i in range(flat.shape[1]):
                    predictions[f"prediction_{i}"] = flat[:, i]
    return pd.concat([sample, pd.DataFrame(predictions)], axis=1)
