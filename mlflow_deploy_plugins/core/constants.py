"""Names several layers must agree on: the flavor, the package, the tag and label prefix."""

from __future__ import annotations

#: The MLflow flavor key of our ONNX models (``MLmodel`` -> ``flavors.mlflow_deploy_plugins``).
FLAVOR_NAME = "mlflow_deploy_plugins"
#: The import name (also what images install).
PACKAGE = "mlflow_deploy_plugins"
#: The distribution name on PyPI.
DIST_NAME = "mlflow-deploy-plugins"
#: Every registry tag, container label and image label we write starts with this prefix.
TAG_PREFIX = "mlflow_deploy."
#: The ONNX model file inside a flavor directory and a serving bundle.
MODEL_FILE = "model.onnx"
#: ``IOSpec.extra`` key: the source takes one unnamed tensor (an MLflow tensor signature), so
#: its callers' column names carry no meaning and columns are taken by position, as MLflow does.
POSITIONAL_COLUMNS = "positional_columns"
#: ``IOSpec.extra`` key: the source's signature names its columns, so MLflow's scoring server
#: refuses rows of bare values for it ("Model is missing inputs"); so does ``/invocations``.
NAMED_COLUMNS = "named_columns"
#: MLflow's scoring route of one model on a shared MLServer (the mlserver target writes it into
#: model-settings.json, ``mlserver_runtime`` registers it).
MLSERVER_INVOCATIONS = "/v2/models/{name}/invocations"
#: The mlserver target's containers (``-C mode=docker``): what the target writes into the
#: environment and ``mlserver_serve`` (the image's entrypoint) reads. The JSON of settings.json,
#: of the one model's model-settings.json (its uri is ``./bundle``), and the HTTP socket count of
#: the server a new container replaces on a shared port (steer new connections to the new one).
MLSERVER_SETTINGS_ENV = "MLFLOW_DEPLOY_MLSERVER_SETTINGS"
MLSERVER_MODEL_ENV = "MLFLOW_DEPLOY_MLSERVER_MODEL"
MLSERVER_TAKEOVER_ENV = "MLFLOW_DEPLOY_MLSERVER_TAKEOVER"
#: The link to the image's bundle in the container's model directory (model-settings.json's uri).
MLSERVER_BUNDLE_LINK = "bundle"
