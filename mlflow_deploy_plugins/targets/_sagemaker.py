"""SageMaker resources of one deployment: the bundle as ``model.tar.gz`` in S3 (with its sha256),
models, endpoint configs and their production variants, waiting for an endpoint's status, and
Application Auto Scaling of its variants."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _aws, _deployments

_logger = logging.getLogger(__name__)

#: Where SageMaker unpacks ``ModelDataUrl`` in the container (the image's bundle directory too).
MODEL_DIR = "/opt/ml/model"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
#: Endpoint states that end a wait (``InService`` is success only for the config waited for).
SETTLED = ("InService", "Failed", "OutOfService")


class StillInProgress(_deployments.DeploymentError):
    """The endpoint did not settle within ``timeout_seconds`` (SageMaker goes on)."""


@dataclass(frozen=True)
class ModelData:
    """The uploaded bundle: ``s3://bucket/key`` and the sha256 of the archive."""

    uri: str
    bucket: str
    key: str
    sha256: str
    size: int
    #: False when an earlier version uploaded the same archive (it must outlive a failure).
    created: bool


def resource_name(name: str) -> str:
    """A unique model / endpoint config name for deployment ``name`` (at most 63 characters)."""
    return f"{name[:44]}-{time.strftime('%y%m%d%H%M%S')}-{uuid.uuid4().hex[:5]}"


def bundle_archive(bundle_dir: str) -> bytes:
    """The bundle's files as a reproducible ``model.tar.gz`` (files at the archive's root, as
    SageMaker unpacks it into /opt/ml/model; no timestamps or owners, so equal bundles give
    equal archives and equal sha256)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(bundle_dir):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, bundle_dir))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return gzip.compress(raw.getvalue(), mtime=0)


def upload_bundle(
    aws: _aws.AwsSession, bundle_dir: str, bucket: str, prefix: str, name: str, tags: dict
) -> ModelData:
    """Upload the bundle as ``s3://bucket/prefix/name/<sha256[:16]>/model.tar.gz``.

    The archive's sha256 is in the key, in the object's metadata and checked by S3 on upload.

    Raises:
        InvalidInputError: the bucket does not exist or is not ours to write (names ``bucket``).
    """
    try:
        aws.call("s3", "head_bucket", Bucket=bucket)
    except _aws.AwsError as e:
        raise InvalidInputError(
            f"Config key 'bucket' of target '{aws.target}': bucket {bucket!r} cannot be used "
            f"({_aws.error_of(e.__cause__)[1] or e}); create it in {aws.region} "
            f"(`aws s3 mb s3://{bucket} --region {aws.region}`) or name another"
        ) from e
    body = bundle_archive(bundle_dir)
    digest = hashlib.sha256(body).hexdigest()
    key = "/".join(p for p in (prefix.strip("/"), name, digest[:16], "model.tar.gz") if p)
    try:
        aws.call("s3", "head_object", Bucket=bucket, Key=key)
        existed = True
    except _aws.AwsError as e:
        if not _aws.is_not_found(e):
            raise
        existed = False
    aws.call(
        "s3",
        "put_object",
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/gzip",
        Metadata={"sha256": digest},
        Tagging=urllib.parse.urlencode({k: v for k, v in tags.items() if v}),
    )
    return ModelData(f"s3://{bucket}/{key}", bucket, key, digest, len(body), not existed)


def delete_prefix(aws: _aws.AwsSession, bucket: str, prefix: str) -> list[str]:
    """Delete every object under ``s3://bucket/prefix``; returns their keys."""
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        keys = [
            o["Key"]
            for page in _aws.translate(lambda: list(pages), "s3.list_objects_v2", aws.target)
            for o in page.get("Contents", [])
        ]
    except _aws.AwsError as e:
        if _aws.is_not_found(e):
            return []
        raise
    for key in keys:
        _aws.ignore_missing(aws, "s3", "delete_object", Bucket=bucket, Key=key)
    return keys


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def create_model(aws: _aws.AwsSession, model_name: str, cfg, image: str, data: ModelData, tags):
    """A SageMaker model: ``image`` + ``ModelDataUrl``, the execution role, env and VPC."""
    container: dict[str, Any] = {
        "Image": image,
        "ModelDataUrl": data.uri,
        "Environment": {str(k): str(v) for k, v in (cfg.env or {}).items()},
    }
    kwargs: dict[str, Any] = {
        "ModelName": model_name,
        "PrimaryContainer": container,
        "ExecutionRoleArn": cfg.execution_role_arn,
        "Tags": _aws.tag_list(tags),
    }
    if cfg.vpc_config:
        kwargs["VpcConfig"] = cfg.vpc_config
    aws.call("sagemaker", "create_model", **kwargs)


def production_variant(cfg, variant_name: str, model_name: str, weight: float) -> dict:
    """One production variant: serverless when ``serverless_config`` is set, else instances."""
    variant: dict[str, Any] = {
        "VariantName": variant_name,
        "ModelName": model_name,
        "InitialVariantWeight": weight,
    }
    if cfg.serverless_config:
        variant["ServerlessConfig"] = cfg.serverless_config
    else:
        variant["InstanceType"] = cfg.instance_type
        variant["InitialInstanceCount"] = cfg.instance_count
    return variant


def create_endpoint_config(aws, config_name: str, cfg, variants: list[dict], tags) -> None:
    kwargs: dict[str, Any] = {
        "EndpointConfigName": config_name,
        "ProductionVariants": variants,
        "Tags": _aws.tag_list(tags),
    }
    if cfg.async_inference_config:
        kwargs["AsyncInferenceConfig"] = cfg.async_inference_config
    aws.call("sagemaker", "create_endpoint_config", **kwargs)


def describe_endpoint(aws: _aws.AwsSession, name: str) -> dict | None:
    """``DescribeEndpoint`` of ``name``, or None when there is no such endpoint."""
    try:
        return aws.call("sagemaker", "describe_endpoint", EndpointName=name)
    except _aws.AwsError as e:
        if _aws.is_not_found(e):
            return None
        raise


def wait_for(aws: _aws.AwsSession, name: str, config_name: str, timeout_s: float, progress):
    """Poll the endpoint until it is ``InService`` on ``config_name``, failed, or rolled back.

    Returns:
        The last ``DescribeEndpoint`` answer.

    Raises:
        DeploymentError: ``Failed``/``OutOfService``, or ``InService`` on another config
            (SageMaker rolled an update back), with the endpoint's ``FailureReason``.
        StillInProgress: still in progress after ``timeout_s`` seconds.
    """
    started, delay, last = time.monotonic(), 0.2, None
    while True:
        info = describe_endpoint(aws, name)
        if info is None:
            raise _deployments.DeploymentError(f"Endpoint '{name}' disappeared while waiting")
        status = info["EndpointStatus"]
        if status != last:
            progress(f"Endpoint '{name}': {status}")
            last = status
        if status in SETTLED:
            reason = info.get("FailureReason") or "no FailureReason given (see CloudWatch logs)"
            if status == "InService" and info.get("EndpointConfigName") == config_name:
                return info
            if status == "InService":
                raise _deployments.DeploymentError(
                    f"SageMaker rolled the update of '{name}' back: {reason}"
                )
            raise _deployments.DeploymentError(f"Endpoint '{name}' is {status}: {reason}")
        if time.monotonic() - started > timeout_s:
            raise StillInProgress(
                f"Endpoint '{name}' is still {status} after {timeout_s:g} s "
                "(-C timeout_seconds): SageMaker goes on; watch it with "
                f"`aws sagemaker describe-endpoint --endpoint-name {name}`"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 15.0)


# --- Application Auto Scaling ---------------------------------------------------------------


def scaling_resource(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def apply_autoscaling(aws: _aws.AwsSession, endpoint: str, variants: list[str], cfg) -> None:
    """Register the variants with Application Auto Scaling (``min_instances`` ..
    ``max_instances``) and track ``target_invocations_per_instance``; nothing when unset."""
    if cfg.max_instances is None:
        return
    for variant in variants:
        resource = scaling_resource(endpoint, variant)
        aws.call(
            "application-autoscaling",
            "register_scalable_target",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION,
            MinCapacity=cfg.min_instances,
            MaxCapacity=cfg.max_instances,
        )
        aws.call(
            "application-autoscaling",
            "put_scaling_policy",
            PolicyName=f"{endpoint}-invocations",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(cfg.target_invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC},
                "ScaleInCooldown": cfg.scale_in_cooldown,
                "ScaleOutCooldown": cfg.scale_out_cooldown,
            },
        )


def remove_autoscaling(aws: _aws.AwsSession, endpoint: str, variants: list[str]) -> None:
    """Deregister the variants (their policies go with them); absent ones are no error.

    SageMaker refuses to update or delete a variant that is still registered."""
    for variant in variants:
        _aws.ignore_missing(
            aws,
            "application-autoscaling",
            "deregister_scalable_target",
            ServiceNamespace="sagemaker",
            ResourceId=scaling_resource(endpoint, variant),
            ScalableDimension=SCALABLE_DIMENSION,
        )


def scaling_of(aws: _aws.AwsSession, endpoint: str, variant: str) -> dict | None:
    """``{"min", "max"}`` of a registered variant, or None."""
    found = aws.call(
        "application-autoscaling",
        "describe_scalable_targets",
        ServiceNamespace="sagemaker",
        ResourceIds=[scaling_resource(endpoint, variant)],
        ScalableDimension=SCALABLE_DIMENSION,
    )["ScalableTargets"]
    return {"min": found[0]["MinCapacity"], "max": found[0]["MaxCapacity"]} if found else None
