"""Which model a drift report is about: the version a URI resolves to, its ONNX twin, its reference.

``models:/churn/3`` (a source version) finds its twin through the tags written at promotion
(``mlflow_deploy.onnx_model`` / ``onnx_version``); ``models:/churn-onnx@champion`` (our ONNX
version) finds its source through ``mlflow_deploy.source_model`` / ``source_version``. The twin
holds the IO contract and the reference sample (inputs + predictions) stored at promotion.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.core.constants import FLAVOR_NAME, MODEL_FILE
from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.errors import ModelNotFoundError
from mlflow_deploy_plugins.registry.gateway import is_not_found

_logger = logging.getLogger(__name__)


@dataclass
class MonitoredModel:
    """A resolved model URI."""

    model_uri: str
    name: str | None  # registered model the URI resolves to (None: not a registry URI)
    version: str | None
    onnx: tuple[str, str] | None = None  # our ONNX twin version holding io + reference
    source: tuple[str, str] | None = None  # the source version, when name/version is the twin
    onnx_model_uri: str | None = None  # where to load the flavor from
    io: IOSpec | None = None
    reference_path: str | None = None  # the stored reference sample, if any
    reference_missing: str = ""  # why there is none
    tagged_versions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.name else self.model_uri

    @property
    def default_experiment(self) -> str:
        if self.name:
            return f"{self.name}-monitoring"
        return "mlflow-deploy-monitoring"

    def no_reference_message(self) -> str:
        promote = (
            f"promote it with a validation sample (mlflow-deploy promote {self.name} "
            f"{self.version} --sample data.parquet) to store one, or "
            if self.name and self.onnx is None and self.source is None
            else ""
        )
        return (
            f"{self.label} has no reference sample to compare with: {self.reference_missing}. "
            f"To provide one, {promote}pass reference=DATA (CLI: --reference PATH), a "
            "DataFrame or a Parquet/CSV/JSONL file holding the model's input columns "
            "(prediction columns optional: they are computed with the ONNX model when missing)."
        )


def resolve(model_uri: str, client) -> MonitoredModel:
    """Resolve ``model_uri`` and load our flavor's IO contract and reference sample location."""
    mv = _registry_version(client, model_uri) if model_uri.startswith("models:/") else None
    if mv is not None:
        name, version = mv.name, str(mv.version)
        model = MonitoredModel(model_uri, name, version, tagged_versions=[(name, version)])
        tags = dict(mv.tags or {})
        if tags.get(tag_keys.KIND) == "onnx":
            model.onnx = (name, version)
            if tags.get(tag_keys.SOURCE_MODEL) and tags.get(tag_keys.SOURCE_VERSION):
                model.source = (tags[tag_keys.SOURCE_MODEL], str(tags[tag_keys.SOURCE_VERSION]))
                model.tagged_versions.append(model.source)
        elif tags.get(tag_keys.ONNX_MODEL) and tags.get(tag_keys.ONNX_VERSION):
            model.onnx = (tags[tag_keys.ONNX_MODEL], str(tags[tag_keys.ONNX_VERSION]))
        if model.onnx is None:
            model.reference_missing = (
                f"it is not an ONNX version of ours and has no ONNX twin (no tag {tag_keys.ONNX_MODEL}; "
                f"status {tags.get(tag_keys.STATUS, 'never promoted')})"
            )
            return model
        model.onnx_model_uri = f"models:/{model.onnx[0]}/{model.onnx[1]}"
    else:
        model = MonitoredModel(model_uri, None, None, onnx_model_uri=model_uri)
    _load_flavor(model)
    return model


def _registry_version(client, model_uri: str) -> ModelVersion | None:
    """The model version a registry URI resolves to; None for a logged model (``models:/m-<id>``).

    Raises:
        ModelNotFoundError: the URI names a model, alias or version that does not exist.
    """
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        found = get_model_name_and_version(client, model_uri)
    except MlflowException as e:
        # an unknown alias is INVALID_PARAMETER_VALUE for MLflow's stores: only its text says
        if is_not_found(e) or "not found" in str(e):
            raise ModelNotFoundError(f"{model_uri} does not resolve: {e.message}") from e
        raise
    if len(found) != 2:
        return None  # a logged model: read like any model URI, nothing to tag
    name, version = found
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        raise ModelNotFoundError(
            f"{model_uri}: registered model {name!r} has no version {version}"
        ) from e


def _load_flavor(model: MonitoredModel) -> None:
    """Download the MLmodel (and the reference sample) of the twin, not the ONNX graph."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    uri = model.onnx_model_uri.rstrip("/")
    try:
        mlmodel = Model.load(download_artifacts(f"{uri}/MLmodel"))
    except (MlflowException, OSError) as e:
        if model.name is None:
            raise ModelNotFoundError(
                f"Cannot load an MLflow model from {model.model_uri}: {e}"
            ) from e
        raise
    conf = mlmodel.flavors.get(FLAVOR_NAME)
    if conf is None:
        model.onnx_model_uri = None
        model.reference_missing = f"{uri} is not a model of our ONNX flavor"
        return
    model.io = IOSpec.from_dict(conf["io"])
    if model.name is None:
        source = conf.get("source") or {}
        if source.get("model_name") and source.get("model_version"):
            model.source = (source["model_name"], str(source["model_version"]))
    reference = conf.get("reference_sample")
    if not reference:
        model.reference_missing = f"{uri} stores no reference sample"
        return
    try:
        model.reference_path = download_artifacts(f"{uri}/{reference}")
    except (MlflowException, OSError) as e:
        model.reference_missing = f"its reference sample {reference} cannot be read ({e})"
        return
    if not os.path.isfile(model.reference_path):
        model.reference_missing = f"{uri}/{reference} is missing"
        model.reference_path = None


def download_onnx_model(model: MonitoredModel) -> str:
    """Local path of the twin's ``model.onnx`` (to predict when data carries no predictions)."""
    from mlflow.artifacts import download_artifacts

    return download_artifacts(f"{model.onnx_model_uri.rstrip('/')}/{MODEL_FILE}")
