"""Any MLflow model URI -> a serving bundle directory (model.onnx + bundle.json).

A model of our flavor is copied as is (it already passed the parity gate). Any other model is
converted through the parity gate first, without writing to the registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow_deploy_plugins.core import serialization
from mlflow_deploy_plugins.core.constants import FLAVOR_NAME, MODEL_FILE
from mlflow_deploy_plugins.core.manifest import MANIFEST_FILE, MANIFEST_SCHEMA_VERSION, Manifest
from mlflow_deploy_plugins.core.session import file_sha256
from mlflow_deploy_plugins.errors import InvalidInputError, ModelNotFoundError

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    path: str
    manifest: Manifest

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, self.manifest.model_file)


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_FILE))


def build_bundle(
    model_uri: str,
    output_dir: str,
    *,
    name: str | None = None,
    settings: dict | None = None,
    **convert_kwargs,
) -> Bundle:
    """Write the serving bundle for ``model_uri`` to ``output_dir`` (created; must be empty).

    Args:
        model_uri: any MLflow model URI (``models:/churn-onnx@champion``, ``models:/churn/3``,
            ``runs:/...``, a local model directory).
        output_dir: where the bundle goes.
        name: served model name; default the registered model name in the URI, else the
            directory name of the model.
        settings: serving defaults recorded in the manifest (env and CLI flags override them).
        convert_kwargs: passed to ``convert()`` when the model is not ONNX yet (``sample=``,
            ``atol=``...).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from mlflow_deploy_plugins.onnx.convert import _registered_name_version, convert

    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise InvalidInputError(f"Bundle directory {output_dir!r} exists and is not empty")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
        mlmodel = Model.load(local)
    except MlflowException as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be resolved: {e.message}") from e
    reg_name, reg_version = _registered_name_version(model_uri)
    os.makedirs(output_dir, exist_ok=True)
    target = os.path.join(output_dir, MODEL_FILE)

    if FLAVOR_NAME in mlmodel.flavors:
        conf = mlmodel.flavors[FLAVOR_NAME]
        shutil.copyfile(os.path.join(local, conf["data"]), target)
        try:  # the copy is what gets served: check it, not the download it came from
            _check_recorded_sha256(model_uri, conf, target)
        except InvalidInputError:
            os.remove(target)
            raise
        io = conf["io"]
        source = conf.get("source", {})
        onnx_model = {
            "name": reg_name,
            "version": reg_version,
            "model_uri": model_uri,
            "run_id": mlmodel.run_id,
        }
        parity = conf.get("parity", {})
    else:
        _logger.info(
            "%s is not an ONNX model of ours: converting through the parity gate", model_uri
        )
        _warn_if_pickle(model_uri, mlmodel, local)
        result = convert(model_uri, **convert_kwargs)
        import onnx

        src = result.source
        # Converters name the graph with a random uuid; a fixed name makes the same source
        # version give the same bytes, hence the same sha256 and a reusable serving image.
        result.onnx_model.graph.name = src.model_name or "model"
        onnx.save(result.onnx_model, target)
        io = result.io.to_dict()
        source = {
            "model_uri": src.model_uri,
            "flavor": src.flavor,
            "model_name": src.model_name,
            "model_version": src.model_version,
            "run_id": src.run_id,
        }
        onnx_model = {}
        parity = {
            "passed": result.parity.passed,
            "rows": result.parity.rows,
            "missing_value_rows": result.parity.missing_value_rows,
            "metrics": result.parity.metrics(),
        }

    served_name = name or reg_name or os.path.basename(os.path.normpath(local)) or "model"
    served_version = str(reg_version or source.get("model_version") or "1")
    import onnxruntime

    raw = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": served_name,
        "version": served_version,
        "model_file": MODEL_FILE,
        "sha256": file_sha256(target),
        "io": io,
        "source": source,
        "onnx_model": onnx_model,
        "parity": parity,
        "settings": dict(settings or {}),
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "onnxruntime_version": onnxruntime.__version__,
    }
    with open(os.path.join(output_dir, MANIFEST_FILE), "w") as f:
        json.dump(raw, f, indent=2, sort_keys=True, default=str)
    manifest = Manifest.read(output_dir)
    _logger.info(
        "Serving bundle for %s written to %s (%s v%s)",
        model_uri,
        output_dir,
        manifest.name,
        manifest.version,
    )
    return Bundle(output_dir, manifest)


def _warn_if_pickle(model_uri: str, mlmodel, local: str) -> None:
    """Name the format before a conversion unpickles the model (the person asked for it)."""
    from mlflow_deploy_plugins.onnx.convert import CONVERTERS

    flavor = next((f for f in CONVERTERS if f in mlmodel.flavors), None)
    if flavor is None:
        return  # conversion refuses it without loading anything
    conf = mlmodel.flavors[flavor]
    data_dir = os.path.join(local, str(conf.get("model_data", "data")))
    files = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    fmt = serialization.serialization_format(flavor, conf, files)
    message = serialization.pickle_warning(model_uri, flavor, fmt)
    if message:
        _logger.warning(message)


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_QUIET = threading.Lock()


@contextlib.contextmanager
def _no_progress_bar():
    """No "Downloading artifacts" bar on stderr for a check the user did not ask for (it would
    land in the middle of ``mlflow-deploy promote --json`` output). MLflow reads the setting from
    the environment only; the lock keeps concurrent checks from restoring each other's value."""
    with _QUIET:
        old = os.environ.get(_PROGRESS_BAR)
        os.environ[_PROGRESS_BAR] = "false"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(_PROGRESS_BAR, None)
            else:
                os.environ[_PROGRESS_BAR] = old


def check_model_file(model_uri: str) -> None:
    """Download an ONNX model of ours (``models:/<twin>/<version>``) and check its model file
    against the sha256 its MLmodel records: ``promote`` does before it re-uses a twin.

    Raises:
        InvalidInputError: the file differs from the one that passed the gate, or no digest.
    """
    import tempfile

    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="twin-check-") as tmp, _no_progress_bar():
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        conf = Model.load(local).flavors.get(FLAVOR_NAME) or {}
        _check_recorded_sha256(model_uri, conf, os.path.join(local, conf.get("data", MODEL_FILE)))


def _check_recorded_sha256(model_uri: str, conf: dict, model_file: str) -> None:
    """Refuse a model file that is not the one the parity gate verified (tampered store).

    The flavor records the sha256 of ``model.onnx`` when it is saved; the copy about to be
    served must have the same digest. A flavor without a recorded digest is refused too: there
    is nothing to check it against.
    """
    recorded = conf.get("sha256")
    if not recorded:
        raise InvalidInputError(
            f"{model_uri}: its MLmodel records no sha256 for {conf.get('data', MODEL_FILE)}, so "
            "the model file cannot be checked; promote the source version again to re-create it"
        )
    digest = file_sha256(model_file)
    if digest != recorded:
        raise InvalidInputError(
            f"{model_uri}: {conf.get('data', MODEL_FILE)} has sha256 {digest}, but the MLmodel "
            f"records {recorded}: the artifact was modified after it passed the parity gate. "
            "Refusing to build a bundle from it; restore the artifact or promote the source "
            "version again"
        )
