"""``run_local`` of the SageMaker target: the deployed image run as SageMaker runs it (argument
``serve``, port 8080, the uploaded ``model.tar.gz`` unpacked read-only into /opt/ml/model, the
model's ``env``), so the container contract is tested before anything is paid for."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile

from mlflow_deploy_plugins.serving.settings import ServingSettings
from mlflow_deploy_plugins.targets import _container, _deployments, _docker, _rollout
from mlflow_deploy_plugins.targets import _sagemaker as sm
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

CONTAINER_PREFIX = "mlflow-deploy-sagemaker-"


#: The container keys of a local run (shared with the other targets' ``run_local``).
LocalRun = _container.LocalRun


def unpack_model_data(archive: bytes, model_dir: str) -> None:
    """Unpack ``model.tar.gz`` as SageMaker does into the directory mounted at /opt/ml/model
    (readable by the image's non-root user)."""
    os.makedirs(model_dir, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(model_dir, filter="data")
    os.chmod(model_dir, 0o755)
    for root, dirs, files in os.walk(model_dir):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def container_spec(cfg, run: LocalRun, model_dir: str) -> dict:
    """``containers.create`` options: the hardened spec, ``serve``, the model directory
    read-only at /opt/ml/model and the model's ``env``. In bridge mode the image's own
    settings apply (0.0.0.0:8080 inside, as on SageMaker); host mode moves the server to
    ``127.0.0.1:port`` because the engine has no bridge to publish 8080 through."""
    env = {str(k): str(v) for k, v in (cfg.env or {}).items()}
    if run.network_mode == "host":
        env[ServingSettings.env_var("host")] = run.host
        env[ServingSettings.env_var("port")] = str(run.port)
    options = _container.container_options(
        run, run.port, env, container_port=recipes.CONTAINER_PORT
    )
    options["volumes"][os.path.abspath(model_dir)] = {"bind": sm.MODEL_DIR, "mode": "ro"}
    options["command"] = ["serve"]
    return options


def serve_foreground(target, name: str, model_uri: str, flavor=None, config=None) -> None:
    """Build (or reuse) the image, run it as SageMaker would, stream its log until Ctrl+C.

    Args:
        target: the ``SageMakerTarget`` (its config class, recipe, docker client, progress).
        name: names the local container.
        model_uri: the model.
        flavor: must be an ONNX-serving flavor or None.
        config: the ``-C`` values (``port``, ``network_mode``, ``ready_timeout``, ``env``,
            the image keys; ``image_url`` runs that image instead of building).
    """
    _deployments.validate_name(name)
    _deployments.check_flavor(flavor, target.target)
    cfg = target.config_class.from_config(config)
    run = LocalRun(cfg.port, cfg.network_mode, cfg.ready_timeout)
    client = target.docker()
    _docker.check_port(client, run.host, run.port)
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-sagemaker-") as work:
        resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
        image = cfg.image_url or target.build_image(client, resolved, cfg).tag
        model_dir = os.path.join(work, "model")
        unpack_model_data(sm.bundle_archive(resolved.bundle.path), model_dir)
        options = container_spec(cfg, run, model_dir)
        _rollout.serve_image_foreground(
            target,
            name,
            resolved,
            image,
            run,
            options,
            container_prefix=CONTAINER_PREFIX,
            remembered=cfg.remembered(),
            serving_as="as SageMaker would",
            url_path="/invocations",
        )
