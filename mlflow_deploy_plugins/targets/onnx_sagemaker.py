"""The ``onnx-sagemaker`` deployment target: the onnx-docker image pushed to ECR, the bundle as
``model.tar.gz`` in S3, a SageMaker real-time (or serverless) endpoint, all through boto3."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient

from mlflow_deploy_plugins.core import config

# Shared parts are imported as modules: MLflow's plugin loader counts every BaseDeploymentClient
# subclass visible here and must find exactly one.
from mlflow_deploy_plugins.targets import (
    _client,
    _config,
    _container,
    _sagemaker_local,
    _sagemaker_target,
)
from mlflow_deploy_plugins.targets._config import TargetConfig, option
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

TARGET = "onnx-sagemaker"
FLAVOR = "onnx"
#: One image serves both targets: SageMaker's contract (``serve``, port 8080, /ping,
#: /invocations, the model in /opt/ml/model) is what the onnx-docker image already does.
RECIPE = recipes.ONNX_SERVING
#: -C keys that act on one call and are not remembered on the endpoint.
ACTION_KEYS = (
    "mode",
    "synchronous",
    "timeout_seconds",
    "variant_name",
    "variant_weight",
    "image_url",
    "archive",
    "rebuild",
    "remove_image",
    "remove_model_data",
    "port",
    "network_mode",
    "ready_timeout",
)


def _role_arn(value: str) -> str | None:
    return None if value.startswith("arn:") and ":role/" in value else "must be an IAM role ARN"


@dataclass(frozen=True)
class OnnxSageMakerConfig(TargetConfig):
    """``-C key=value`` settings of the onnx-sagemaker target (MLflow's sagemaker names)."""

    target: ClassVar[str] = TARGET

    region_name: str | None = option(
        None, "AWS region; default the AWS chain's (AWS_REGION, the profile's region)."
    )
    execution_role_arn: str | None = option(
        None,
        "IAM role SageMaker assumes to pull the image and read the model data (required).",
        check=_role_arn,
    )
    bucket: str | None = option(None, "S3 bucket of model.tar.gz (required; must exist).")
    prefix: str = option("mlflow-deploy", "S3 key prefix: PREFIX/NAME/SHA256/model.tar.gz.")
    image_url: str | None = option(
        None, "ECR image to deploy as is; default: build the onnx-docker image and push it."
    )
    ecr_repository: str | None = option(
        None, "ECR repository pushed to (created when missing); default mlflow-deploy/MODEL."
    )
    instance_type: str = option("ml.m5.large", "Instance type of the production variant.")
    instance_count: int = option(1, "Initial instance count.", check=config.at_least(1))
    vpc_config: dict | None = option(
        None, 'VpcConfig of the model, JSON: {"SecurityGroupIds": [...], "Subnets": [...]}.'
    )
    serverless_config: dict | None = option(
        None,
        'Serverless variant instead of instances, JSON: {"MemorySizeInMB": 2048, '
        '"MaxConcurrency": 5}.',
    )
    async_inference_config: dict | None = option(
        None, "AsyncInferenceConfig of the endpoint config, JSON."
    )
    env: dict | None = option(None, "Environment of the container, JSON (no secrets: visible).")
    tags: dict | None = option(None, "Extra tags of every resource, JSON.")
    mode: str | None = option(
        None,
        "create (default of create); update: replace (default: the new variant takes all "
        "traffic) or add (a new variant next to the current ones, weighted by variant_weight).",
        choices=("create", "replace", "add"),
    )
    variant_name: str | None = option(
        None, "Name of the new production variant; default: its model's."
    )
    variant_weight: float | None = option(
        None,
        "Traffic weight of the new variant: default 1; 0 in add mode (raise it for a canary).",
        check=config.at_least(0),
    )
    synchronous: bool = option(True, "Wait for InService (else return once SageMaker accepted).")
    timeout_seconds: float = option(
        1200,
        "Longest wait for InService; then an error (SageMaker goes on).",
        check=config.positive,
    )
    archive: bool = option(False, "update: keep the replaced models and endpoint configs.")
    min_instances: int = option(1, "Autoscaling: fewest instances.", check=config.at_least(1))
    max_instances: int | None = option(
        None,
        "Autoscaling: most instances; set it to turn autoscaling on.",
        check=config.at_least(1),
    )
    target_invocations_per_instance: float = option(
        100.0,
        "Autoscaling target: invocations per instance per minute.",
        check=config.positive,
    )
    scale_in_cooldown: int = option(
        300, "Autoscaling: seconds between scale-ins.", check=config.at_least(0)
    )
    scale_out_cooldown: int = option(
        60, "Autoscaling: seconds between scale-outs.", check=config.at_least(0)
    )
    base_image: str = option(
        "python:3.11-slim", "Image the serving image is built FROM (needs python3 with venv)."
    )
    python_version: str | None = _config.python_version_option()
    platform: str | None = _config.platform_option()
    wheel_cache: str | None = _config.wheel_cache_option()
    rebuild: bool = _config.rebuild_option()
    remove_image: bool = option(False, "delete: also delete the image's tag from ECR.")
    remove_model_data: bool = option(False, "delete: also delete the model.tar.gz objects from S3.")
    port: int = option(
        8080, "run_local: host port of the container's 8080.", check=_container.HOST_PORT
    )
    network_mode: str = option(
        "bridge",
        "run_local: bridge (port 8080 inside, published on 127.0.0.1:port, as SageMaker runs "
        "it) or host (engines without a bridge: the server listens on 127.0.0.1:port).",
        choices=("bridge", "host"),
    )
    ready_timeout: float = option(
        120.0, "run_local: seconds to wait for /ping.", check=config.positive
    )

    def remembered(self) -> dict[str, Any]:
        """What the endpoint's tags keep (an update starts from it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ACTION_KEYS}


def target_help() -> str:
    """The text of ``mlflow deployments help -t onnx-sagemaker`` (keys from the config class)."""
    return f"""\
The onnx-sagemaker target deploys the onnx-docker image (the model as ONNX + the serving
runtime; it speaks SageMaker's container contract: `serve`, port 8080, /ping, /invocations,
the model in /opt/ml/model) to a SageMaker real-time or serverless endpoint, with boto3:
image -> ECR (repository created when missing), bundle -> s3://BUCKET/PREFIX/NAME/SHA/model.tar.gz,
then model, endpoint config and endpoint.

Credentials come only from the standard AWS chain (environment, ~/.aws/credentials and
~/.aws/config via `aws configure` or AWS_PROFILE, SSO, container or instance roles); they are
never -C keys and never written into images, configs or logs. AWS_ENDPOINT_URL is honoured.

create blocks until the endpoint is InService (bounded by timeout_seconds), or fails with the
endpoint's FailureReason and deletes what it made. update creates a new model and endpoint
config and calls UpdateEndpoint (SageMaker's blue/green: the old variant serves until the new
one is healthy; a failed update is rolled back by SageMaker): mode=replace swaps the variant,
mode=add adds one next to the current ones with variant_weight (a canary). delete is idempotent
(remove_image / remove_model_data also delete the ECR tag and the S3 objects). run_local runs
the same image as SageMaker does (`serve`, port 8080, model.tar.gz unpacked in /opt/ml/model).

Config (-C key=value; JSON for dict keys):
{OnnxSageMakerConfig.help_table()}

Example:
  mlflow deployments create -t onnx-sagemaker --name churn -m models:/churn@champion \\
      -C region_name=eu-west-1 -C bucket=my-models \\
      -C execution_role_arn=arn:aws:iam::123456789012:role/SageMakerExecution
  mlflow deployments predict -t onnx-sagemaker --name churn --input-path rows.json
  mlflow deployments update -t onnx-sagemaker --name churn -m models:/churn/4 \\
      -C mode=add -C variant_weight=0.1
  mlflow deployments delete -t onnx-sagemaker --name churn -C remove_model_data=true
"""


def run_local(name, model_uri, flavor=None, config=None):
    """Build the image and run it as SageMaker does, in the foreground until interrupted."""
    OnnxSageMakerDeploymentClient(TARGET).serve_foreground(name, model_uri, flavor, config)


class OnnxSageMakerDeploymentClient(_client.DelegatingClient, BaseDeploymentClient):
    """Deployments of ONNX models on SageMaker endpoints (the work is done by
    ``_sagemaker_target.SageMakerTarget``, whose docstrings say what each call guarantees:
    create pushes the image, uploads the bundle and waits for InService; update is a new model
    and endpoint config then UpdateEndpoint, ``mode=replace`` or ``add``; list reads the tags).

    The target URI may name the region: ``onnx-sagemaker:/eu-west-1``. ``progress`` (a
    callable taking one line) receives build, push and wait progress; by default stderr.
    """

    def __init__(self, target_uri: str = TARGET):
        super().__init__(target_uri)
        _, _, region = target_uri.partition(":/")
        self.region_name = region.strip("/") or None
        self.progress = _client.stderr_progress
        self.deployments = _sagemaker_target.SageMakerTarget(
            TARGET,
            FLAVOR,
            OnnxSageMakerConfig,
            RECIPE,
            progress=lambda line: self.progress(line),
            region_name=self.region_name,
        )

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: the image as SageMaker runs it, until Ctrl+C."""
        _sagemaker_local.serve_foreground(self.deployments, name, model_uri, flavor, config)
