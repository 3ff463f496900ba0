"""What a SageMaker deployment is, read from SageMaker itself: the tags written on its endpoint,
models and configs (lineage, image, model data, the remembered ``-C`` config) and read back by
``get``/``list``/``update``, the endpoint of a deployment, and the resources it owns."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow_deploy_plugins.targets import _aws, _deployments
from mlflow_deploy_plugins.targets import _sagemaker as sm

_logger = logging.getLogger(__name__)

LABEL_MODEL_DATA = _deployments.LABEL_PREFIX + "model_data"
#: The listing operation, its result key and the ARN key of each kind of owned resource.
_LISTINGS = {
    "model": ("list_models", "Models", "ModelArn"),
    "endpoint_config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigArn"),
}


@dataclass(frozen=True)
class Release:
    """One version made ready for SageMaker: its lineage, image and model data."""

    resolved: _deployments.ResolvedModel
    image: str
    data: sm.ModelData


def resource_tags(target: str, name: str, cfg, release: Release | None = None) -> dict[str, str]:
    """The user's ``-C tags`` plus ours: target, deployment, and the release's lineage."""
    tags = {str(k): str(v) for k, v in (cfg.tags or {}).items()}
    tags[_deployments.LABEL_TARGET] = target
    tags[_deployments.LABEL_DEPLOYMENT] = name
    if release is not None:
        tags.update(release.resolved.labels())
        tags[_deployments.LABEL_IMAGE] = release.image
        tags[LABEL_MODEL_DATA] = release.data.uri
    return tags


def endpoint_tags(target: str, name: str, cfg, release: Release) -> dict[str, str]:
    """The endpoint's tags: :func:`resource_tags`, the remembered config, the creation time."""
    remembered = json.dumps(cfg.remembered(), sort_keys=True)
    return {
        **resource_tags(target, name, cfg, release),
        **_aws.encode_tag(_deployments.LABEL_CONFIG, remembered),
        _deployments.LABEL_CREATED: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def remembered_config(tags: dict[str, str]) -> dict:
    return json.loads(_aws.decode_tag(tags, _deployments.LABEL_CONFIG) or "{}")


def retag(aws: _aws.AwsSession, arn: str, old: dict[str, str], new: dict[str, str]) -> None:
    """Replace the endpoint's tags by ``new`` (config chunks ``new`` no longer has removed)."""
    stale = [k for k in old if k.startswith(_deployments.LABEL_CONFIG + ".") and k not in new]
    if stale:
        aws.call("sagemaker", "delete_tags", ResourceArn=arn, TagKeys=stale)
    aws.call("sagemaker", "add_tags", ResourceArn=arn, Tags=_aws.tag_list(new))


def tags_of(aws: _aws.AwsSession, arn: str) -> dict[str, str]:
    return _aws.tag_dict(aws.call("sagemaker", "list_tags", ResourceArn=arn)["Tags"])


def endpoint_of(aws: _aws.AwsSession, target: str, name: str) -> tuple[dict, dict[str, str]]:
    """``DescribeEndpoint`` and the tags of deployment ``name``.

    Raises:
        DeploymentNotFoundError: no such endpoint, or one this target did not make.
    """
    info = sm.describe_endpoint(aws, name)
    tags = tags_of(aws, info["EndpointArn"]) if info else {}
    if info is None or tags.get(_deployments.LABEL_TARGET) != target:
        raise _deployments.DeploymentNotFoundError(
            f"No deployment named '{name}' on {target} in {aws.region}"
            + (" (an endpoint of that name exists, not made by this target)" if info else "")
        )
    return info, tags


def owned(aws: _aws.AwsSession, target: str, kind: str, name: str) -> list[str]:
    """Every ``model`` / ``endpoint_config`` of deployment ``name`` (by name, then tags),
    those of earlier versions included."""
    operation, key, arn = _LISTINGS[kind]
    pages = aws.client("sagemaker").get_paginator(operation).paginate(NameContains=name[:44])
    found = []
    for page in _aws.translate(lambda: list(pages), f"sagemaker.{operation}", target):
        for item in page[key]:
            tags = tags_of(aws, item[arn])
            if tags.get(_deployments.LABEL_DEPLOYMENT) == name and (
                tags.get(_deployments.LABEL_TARGET) == target
            ):
                found.append(item[arn].rsplit("/", 1)[1])
    return found


def describe(aws: _aws.AwsSession, target: str, flavor: str, name: str) -> dict:
    """What ``get_deployment``/``list_deployments`` return: status, FailureReason, endpoint
    URL, lineage, image, model data, variants (weights, instances, autoscaling), config."""
    info, tags = endpoint_of(aws, target, name)
    config = aws.call(
        "sagemaker", "describe_endpoint_config", EndpointConfigName=info["EndpointConfigName"]
    )
    current = {v["VariantName"]: v for v in info.get("ProductionVariants", [])}
    variants = []
    for v in config["ProductionVariants"]:
        live = current.get(v["VariantName"], {})
        variants.append(
            {
                "name": v["VariantName"],
                "model": v["ModelName"],
                "weight": live.get("CurrentWeight", v.get("InitialVariantWeight")),
                "instance_type": v.get("InstanceType"),
                "instances": live.get("CurrentInstanceCount", v.get("InitialInstanceCount")),
                "serverless_config": v.get("ServerlessConfig"),
                "autoscaling": sm.scaling_of(aws, name, v["VariantName"]),
            }
        )
    runtime = aws.client("sagemaker-runtime").meta.endpoint_url
    return {
        "name": name,
        "flavor": flavor,
        "target": target,
        "status": info["EndpointStatus"],
        "failure_reason": info.get("FailureReason"),
        "endpoint_url": f"{runtime}/endpoints/{name}/invocations",
        "endpoint_arn": info["EndpointArn"],
        "region": aws.region,
        **_deployments.describe_lineage(tags),
        "image": tags.get(_deployments.LABEL_IMAGE),
        "model_data": tags.get(LABEL_MODEL_DATA),
        "endpoint_config": info["EndpointConfigName"],
        "variants": variants,
        "created_at": tags.get(_deployments.LABEL_CREATED),
        "config": remembered_config(tags),
    }


def current_variants(info: dict, config: dict) -> list[dict]:
    """The serving variants as they run now (current weights and instance counts), to be
    kept in a new endpoint config (``mode=add``)."""
    live = {v["VariantName"]: v for v in info.get("ProductionVariants", [])}
    variants = []
    for v in config["ProductionVariants"]:
        now = live.get(v["VariantName"], {})
        keep = {
            k: v[k]
            for k in ("VariantName", "ModelName", "InstanceType", "ServerlessConfig")
            if k in v
        }
        keep["InitialVariantWeight"] = now.get("CurrentWeight", v.get("InitialVariantWeight", 1.0))
        if "InstanceType" in v:
            keep["InitialInstanceCount"] = now.get(
                "CurrentInstanceCount", v["InitialInstanceCount"]
            )
        variants.append(keep)
    return variants
