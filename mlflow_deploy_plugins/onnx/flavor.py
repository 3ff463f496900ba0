"""Our MLflow flavor: a verified ONNX model plus its provenance, IO contract and evidence.

The MLmodel keeps MLflow's standard ``onnx`` block (``mlflow.onnx.load_model`` works) and adds a
``mlflow_deploy_plugins`` block. The pyfunc returns what the SOURCE model's pyfunc returned.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.constants import FLAVOR_NAME, MODEL_FILE, POSITIONAL_COLUMNS
from mlflow_deploy_plugins.core.iospec import (
    SCHEMA_VERSION,
    IOSpec,
    SchemaError,
)
from mlflow_deploy_plugins.core.session import file_sha256, make_session
from mlflow_deploy_plugins.errors import InvalidInputError

_logger = logging.getLogger(__name__)

PARITY_FILE = "parity_report.json"
OPTIMIZATION_FILE = "optimization_report.json"
REFERENCE_FILE = "reference_sample.parquet"


def save_model(result, path: str, mlflow_model=None, input_example_rows: int = 5) -> None:
    """Write ``result`` (a ConversionResult) as an MLflow model directory at ``path``."""
    import mlflow
    import onnx
    from mlflow.models import Model, infer_signature
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import _mlflow_conda_env

    if os.path.exists(path) and os.listdir(path):
        raise InvalidInputError(f"Output directory {path!r} already exists and is not empty")
    os.makedirs(path, exist_ok=True)
    mlflow_model = mlflow_model or Model()

    model_file = os.path.join(path, MODEL_FILE)
    onnx.save(result.onnx_model, model_file)
    with open(os.path.join(path, PARITY_FILE), "w") as f:
        json.dump(result.parity.to_dict(), f, indent=2, default=str)
    with open(os.path.join(path, OPTIMIZATION_FILE), "w") as f:
        json.dump(result.optimization.to_dict(), f, indent=2, default=str)
    result.reference_sample.to_parquet(os.path.join(path, REFERENCE_FILE), index=False)

    example = result.sample_frame[result.io.columns].head(input_example_rows)
    session = result.session or make_session(result.onnx_model.SerializeToString())
    _predict(session, result.io, example, None)  # the saved example must run on the twin
    if _takes_arrays(result):
        # The source was logged with an array (tensor signature): keep taking arrays, which
        # MLflow's schema enforcement refuses for a signature with named columns.
        example = example.to_numpy()
    elif _takes_named_tensors(result):
        example = {
            b.name: example[list(b.columns)].to_numpy(dtype=b.dtype).reshape(-1, *b.shape[1:])
            for b in result.io.inputs
        }
    # The output schema is the source's (None when it declares none): the twin returns what the
    # source returns, and spark_udf's default result type comes from this schema. One inferred
    # from the twin's array made spark_udf return [[0], [1]] where the source returns 0, 1, and
    # refuse string labels ("tensor spec type object is not supported").
    mlflow_model.signature = infer_signature(example, params={"predict_method": "predict"})
    mlflow_model.signature.outputs = getattr(result.source.signature, "outputs", None)
    _save_example(mlflow_model, example, path)

    source = result.source
    mlflow_model.add_flavor(
        "onnx",
        onnx_version=onnx.__version__,
        data=MODEL_FILE,
        providers=["CPUExecutionProvider"],
        onnx_session_options=None,
        code=None,
    )
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        schema_version=SCHEMA_VERSION,
        data=MODEL_FILE,
        sha256=file_sha256(model_file),
        io=result.io.to_dict(),
        source={
            "model_uri": source.model_uri,
            "flavor": source.flavor,
            "model_name": source.model_name,
            "model_version": source.model_version,
            "run_id": source.run_id,
            "pyfunc_predict_fn": source.pyfunc_predict_fn,
        },
        converter={
            "name": result.converter,
            "version": result.converter_version,
            "options": result.options.__dict__,
            "options_hash": result.options.fingerprint(),
            "notes": result.notes,
        },
        opsets=result.opsets,
        parity={
            "passed": result.parity.passed,
            "rows": result.parity.rows,
            "variant": result.parity.variant,
            "sample_origin": result.parity.sample_origin,
            "small_sample": result.parity.small_sample,
            "missing_value_rows": result.parity.missing_value_rows,
            "metrics": result.parity.metrics(),
            "report": PARITY_FILE,
        },
        optimization={
            "level": result.optimization.level,
            "quantized": result.optimization.quantized,
            "onnxruntime_version": result.optimization.onnxruntime_version,
            "report": OPTIMIZATION_FILE,
        },
        reference_sample=REFERENCE_FILE,
        reference_rows=len(result.reference_sample),
    )
    import mlflow_deploy_plugins

    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_deploy_plugins.onnx.flavor",
        data=MODEL_FILE,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    pip = [
        f"mlflow=={mlflow.__version__}",
        f"onnx=={onnx.__version__}",
        f"onnxruntime=={__import__('onnxruntime').__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"mlflow-deploy-plugins=={mlflow_deploy_plugins.__version__}",
    ]
    from mlflow.utils.environment import _PythonEnv

    with open(os.path.join(path, "requirements.txt"), "w") as f:
        f.write("\n".join(pip) + "\n")
    _PythonEnv.current().to_yaml(os.path.join(path, "python_env.yaml"))
    import yaml

    with open(os.path.join(path, "conda.yaml"), "w") as f:
        yaml.safe_dump(_mlflow_conda_env(additional_pip_deps=pip), f, default_flow_style=False)
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def _takes_arrays(result) -> bool:
    """True when the source's signature is tensor-based and the graph takes one numeric matrix
    (``convert`` marks such an IOSpec; see ``takes_one_tensor``)."""
    return bool(result.io.extra.get(POSITIONAL_COLUMNS))


def _takes_named_tensors(result) -> bool:
    """The source's signature names several tensors and each is one graph input (a Keras model
    with named inputs): the twin takes the same ``{name: array}`` the source takes."""
    inputs = getattr(getattr(result.source, "signature", None), "inputs", None)
    if inputs is None or not inputs.is_tensor_spec() or len(inputs.inputs) < 2:
        return False
    return [s.name for s in inputs.inputs] == [b.name for b in result.io.inputs]


def log_model(result, name: str = "model", registered_model_name: str | None = None, **kwargs):
    """Log ``result`` to the active run (or a new one); returns MLflow's ModelInfo."""
    from mlflow.models import Model

    import mlflow_deploy_plugins.onnx.flavor as flavor_module

    return Model.log(
        artifact_path=None,
        name=name,
        flavor=flavor_module,
        registered_model_name=registered_model_name,
        result=result,
        **kwargs,
    )


class OnnxModel:
    """A loaded model of our flavor: an onnxruntime session plus the IO contract."""

    def __init__(self, path: str, conf: dict):
        self.path = path
        self.conf = conf
        self.io = IOSpec.from_dict(conf["io"])
        model_file = os.path.join(path, conf["data"])
        digest = file_sha256(model_file)
        if conf.get("sha256") and digest != conf["sha256"]:
            raise InvalidInputError(
                f"{model_file} has sha256 {digest}, the MLmodel records {conf['sha256']}: "
                "the model file was modified after it was verified"
            )
        self.session = make_session(model_file)

    @property
    def source(self) -> dict:
        return self.conf.get("source", {})

    @property
    def reference_sample_path(self) -> str | None:
        ref = self.conf.get("reference_sample")
        return os.path.join(self.path, ref) if ref else None

    def predict(self, data: Any, predict_method: str | None = None) -> np.ndarray:
        return _predict(self.session, self.io, data, predict_method)


def _feed(io: IOSpec, data: Any) -> dict:
    try:
        if isinstance(data, pd.DataFrame):
            if list(data.columns) == list(range(data.shape[1])) and data.shape[1] == len(
                io.columns
            ):
                return io.encode_matrix(data.to_numpy())
            fast = _matrix_fast_path(io, data)
            if fast is not None:
                io.check_missing(fast)
                io.check_infinite(fast)
                io.check_unseen(fast)
                return fast
            return io.encode_columns(
                {c: data[c].to_numpy() for c in io.columns if c in data}, len(data)
            )
        if isinstance(data, dict):
            onnx_names = {b.name for b in io.inputs}
            if set(data) == onnx_names and not set(data) & set(io.columns) - onnx_names:
                feed = {k: np.asarray(v) for k, v in data.items()}
                io.check_missing(feed, strings=True)
                io.check_infinite(feed)
                io.check_unseen(feed)
                return feed
            return io.encode_columns({k: np.asarray(v) for k, v in data.items()})
        if isinstance(data, pd.Series):
            data = data.to_frame().T
            return io.encode_columns({c: data[c].to_numpy() for c in io.columns if c in data}, 1)
        return io.encode_matrix(np.asarray(data))
    except SchemaError as e:
        raise InvalidInputError(str(e)) from e


def _matrix_fast_path(io: IOSpec, data: pd.DataFrame) -> dict | None:
    """One numeric matrix input fed from a frame: one conversion, no per-column work."""
    if len(io.inputs) != 1 or io.inputs[0].dtype == "string" or len(io.inputs[0].shape) != 2:
        return None
    binding = io.inputs[0]
    if list(data.columns) != list(binding.columns):
        return None  # selecting columns copies the frame: per-column encoding is cheaper
    try:
        matrix = data.to_numpy(dtype=binding.dtype)
    except (KeyError, TypeError, ValueError):
        return None  # the slow path names the missing or non-numeric column
    return {binding.name: matrix}


def _predict(session, io: IOSpec, data: Any, predict_method: str | None) -> np.ndarray:
    try:
        out_spec = io.output_for(io.role_for(predict_method))
    except SchemaError as e:
        raise InvalidInputError(str(e)) from e
    feed = _feed(io, data)
    if any(value.shape[:1] == (0,) for value in feed.values()):
        # No rows: an empty answer of the output's type. Running some graphs on 0 rows fails in
        # onnxruntime (ArrayFeatureExtractor), others answer empty; the answer is the same for all.
        raw = _empty_output(out_spec)
    else:
        raw = session.run([out_spec.name], feed)[0]
    return io.as_source(out_spec, raw)


def _empty_output(out_spec) -> np.ndarray:
    shape = (0, *(d if isinstance(d, int) else 0 for d in out_spec.shape[1:]))
    return np.empty(shape, dtype=object if out_spec.dtype == "string" else out_spec.dtype)


class _PyFuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps; ``params={"predict_method": ...}``."""

    def __init__(self, model: OnnxModel):
        self.model = model

    def get_raw_model(self) -> OnnxModel:
        return self.model

    def predict(self, data, params: dict | None = None):
        method = (params or {}).get("predict_method")
        return self.model.predict(data, method)


def _flavor_conf(path: str) -> dict:
    from mlflow.utils.model_utils import _get_flavor_configuration

    return _get_flavor_configuration(model_path=path, flavor_name=FLAVOR_NAME)


def load_model(model_uri: str, dst_path: str | None = None) -> OnnxModel:
    """Load a model of our flavor from any MLflow model URI."""
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    local = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    return OnnxModel(local, _flavor_conf(local))


def _load_pyfunc(path: str) -> _PyFuncModel:
    # MLflow passes the data path (model.onnx) or the model dir depending on the version.
    model_dir = path if os.path.isdir(path) else os.path.dirname(path)
    return _PyFuncModel(OnnxModel(model_dir, _flavor_conf(model_dir)))
