"""Which source models the automation may load: the serialisation format, read from the MLmodel
(never by loading the model), against the ``trust_pickle`` setting of the automation config.

``promote()`` and the CLI load what the person asks for and only warn (:func:`warn_if_pickle`);
the automation, which acts on whatever any registry user promotes, refuses a format that runs
code unless ``trust_pickle: true`` is set for that model or globally (docs/registry.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow_deploy_plugins.core import serialization
from mlflow_deploy_plugins.errors import DeployPluginError

_logger = logging.getLogger(__name__)


class UntrustedModelError(DeployPluginError):
    """The automation would have to unpickle a model nobody said to trust."""


@dataclass(frozen=True)
class SourceFormat:
    """The flavor a conversion loads a model through and how its files are serialised."""

    model_uri: str
    flavor: str | None
    format: str

    @property
    def runs_code(self) -> bool:
        return self.flavor is not None and serialization.runs_code(self.format)

    def describe(self) -> str:
        return f"{self.model_uri} ({self.flavor} flavor, {self.format} serialisation)"


def source_format(model_uri: str) -> SourceFormat:
    """Read ``model_uri``'s MLmodel (and, for pytorch and tensorflow, its file names); loads
    nothing.

    The flavor is the one conversion would load (the first of ``onnx.convert.CONVERTERS`` the
    MLmodel has); None when no converter applies (conversion refuses it without loading).
    """
    import mlflow
    from mlflow.models import Model

    from mlflow_deploy_plugins.onnx.convert import CONVERTERS

    uri = model_uri.rstrip("/")
    mlmodel = Model.load(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel"))
    flavor = next((f for f in CONVERTERS if f in mlmodel.flavors), None)
    if flavor is None:
        return SourceFormat(model_uri, None, serialization.UNKNOWN)
    conf = mlmodel.flavors[flavor]
    files: list[str] = []
    if flavor in ("pytorch", "tensorflow"):
        data = conf.get("model_data") or conf.get("data") or "data"
        listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{uri}/{data}")
        files = [a.path for a in listed]
    return SourceFormat(model_uri, flavor, serialization.serialization_format(flavor, conf, files))


def warn_if_pickle(model_uri: str) -> SourceFormat | None:
    """Log a warning naming the format when ``model_uri`` loads through pickle (best effort)."""
    try:
        found = source_format(model_uri)
    except Exception as e:  # the conversion reports an unreadable model better than this can
        _logger.debug("Could not read the serialisation format of %s: %s", model_uri, e)
        return None
    if found.flavor is not None:
        message = serialization.pickle_warning(model_uri, found.flavor, found.format)
        if message:
            _logger.warning(message)
    return found


def check_trusted(model_uri: str, trust_pickle: bool, setting: str) -> SourceFormat:
    """The source's format, or :class:`UntrustedModelError` when it runs code and is not trusted.

    Args:
        model_uri: the source version (``models:/name/version``).
        trust_pickle: the automation config's setting for this model.
        setting: where to set it, for the message (``models[0].trust_pickle``...).
    """
    found = source_format(model_uri)
    if not found.runs_code:
        return found
    if trust_pickle:
        _logger.warning(
            "Loading %s because %s is true: the model file can run code on this host",
            found.describe(),
            setting,
        )
        return found
    raise UntrustedModelError(
        f"Refused to load {found.describe()}: loading it can run arbitrary code on the "
        f"automation host. Set {setting}: true in the automation config if you trust every "
        "person who can register this model, or log the model with serialization_format='skops'"
    )
