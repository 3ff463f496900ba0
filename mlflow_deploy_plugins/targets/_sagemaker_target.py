"""The lifecycle of a SageMaker target (create, update, delete, list, get, predict) for one config
class and one image recipe; the target's client delegates every call here. Everything ``get``
shows is read from SageMaker (the endpoint, its config, models and tags), never a local file."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _aws, _deployments, _ecr, _predict
from mlflow_deploy_plugins.targets import _sagemaker as sm
from mlflow_deploy_plugins.targets import _sagemaker_state as state
from mlflow_deploy_plugins.targets._images import builder
from mlflow_deploy_plugins.targets._images.recipes import Recipe

_logger = logging.getLogger(__name__)

#: SageMaker endpoint names: letters, digits and '-' (no '_' or '.'), at most 63.
_ENDPOINT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass
class SageMakerTarget:
    """Deployments of one target on SageMaker (see the module docstring)."""

    target: str
    flavor: str
    config_class: Any
    recipe: Recipe
    progress: Callable[[str], None]
    #: From the target URI (``onnx-sagemaker:/eu-west-1``); -C region_name wins.
    region_name: str | None = None
    docker_client: Any = field(default=None, repr=False)

    # --- create / update / delete ---------------------------------------------------------------

    def create_deployment(self, name: str, model_uri: str, flavor=None, config=None) -> dict:
        """Push the image, upload the bundle, create model, endpoint config and endpoint; block
        until InService (``synchronous``), bounded by ``timeout_seconds``.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for bad config, a missing region, role or
                bucket (naming the key) or no credentials; RESOURCE_ALREADY_EXISTS for an
                existing endpoint; INTERNAL_ERROR with the endpoint's FailureReason when it
                fails or times out (everything create made is deleted again).
        """
        check_endpoint_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config(config)
        if cfg.mode not in (None, "create"):
            raise InvalidInputError(
                f"Config key 'mode' of target '{self.target}'={cfg.mode!r} is for update "
                "(mlflow deployments update); create takes mode=create"
            )
        self._check(cfg)
        aws = self.session(cfg)
        if sm.describe_endpoint(aws, name) is not None:
            raise AlreadyExistsError(
                f"Endpoint '{name}' already exists in {aws.region}: update it "
                "(mlflow deployments update) or delete it first"
            )
        release = self._release(aws, name, model_uri, cfg)
        model_name = sm.resource_name(name)
        variant = cfg.variant_name or model_name
        variants = [sm.production_variant(cfg, variant, model_name, _weight(cfg, 1.0))]
        made = self._stage(aws, name, cfg, release, model_name, variants)
        try:
            tags = state.endpoint_tags(self.target, name, cfg, release)
            aws.call(
                "sagemaker",
                "create_endpoint",
                EndpointName=name,
                EndpointConfigName=model_name,
                Tags=_aws.tag_list(tags),
            )
            made.append(("endpoint", name))
            self.progress(
                f"Creating endpoint '{name}' in {aws.region} ({release.resolved.lineage()})"
            )
            if cfg.synchronous:
                sm.wait_for(aws, name, model_name, cfg.timeout_seconds, self.progress)
                sm.apply_autoscaling(aws, name, [variant], cfg)
        except BaseException:
            self._undo(aws, made, release.data)
            raise
        return state.describe(aws, self.target, self.flavor, name)

    def update_deployment(self, name: str, model_uri=None, flavor=None, config=None) -> dict:
        """A new model and endpoint config, then ``UpdateEndpoint``: SageMaker keeps the old
        variant serving until the new one is healthy, and rolls a failed update back.

        ``mode=replace`` (default): the new variant takes all traffic, the old models and config
        are deleted after InService (kept with ``archive``). ``mode=add``: the new variant joins
        the current ones with ``variant_weight`` (default 0, as MLflow's sagemaker target).

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when there is no such deployment;
                INTERNAL_ERROR with the FailureReason when the update failed (the previous
                version keeps serving; what the update made is deleted) or timed out.
        """
        _deployments.check_flavor(flavor, self.target)
        given = self.config_class.from_config(config)
        aws = self.session(given)
        info, tags = state.endpoint_of(aws, self.target, name)
        remembered = state.remembered_config(tags)
        cfg = self.config_class.from_config({**remembered, **(config or {})})
        mode = cfg.mode or "replace"
        if mode == "create":
            raise InvalidInputError(
                f"Config key 'mode' of target '{self.target}'='create' is for create: "
                "update takes mode=replace or mode=add"
            )
        self._check(cfg)
        if info["EndpointStatus"] not in ("InService", "Failed", "OutOfService"):
            raise _deployments.DeploymentError(
                f"Endpoint '{name}' is {info['EndpointStatus']}: SageMaker takes no update "
                "until that ends; try again later"
            )
        old_config = aws.call(
            "sagemaker", "describe_endpoint_config", EndpointConfigName=info["EndpointConfigName"]
        )
        old_variants = [v["VariantName"] for v in old_config["ProductionVariants"]]
        model_name = sm.resource_name(name)
        variant = cfg.variant_name or model_name
        if mode == "add" and variant in old_variants:
            raise AlreadyExistsError(f"Variant '{variant}' already serves on '{name}'")
        release = self._release(aws, name, model_uri or tags[_deployments.LABEL_MODEL_URI], cfg)
        weight = _weight(cfg, 0.0 if mode == "add" else 1.0)
        new_variant = sm.production_variant(cfg, variant, model_name, weight)
        variants = [new_variant] + (
            state.current_variants(info, old_config) if mode == "add" else []
        )
        made = self._stage(aws, name, cfg, release, model_name, variants)
        self.progress(f"Updating '{name}' ({mode}): -> {release.resolved.lineage()}")
        sm.remove_autoscaling(aws, name, old_variants)
        try:
            aws.call(
                "sagemaker", "update_endpoint", EndpointName=name, EndpointConfigName=model_name
            )
            if cfg.synchronous:
                sm.wait_for(aws, name, model_name, cfg.timeout_seconds, self.progress)
        except sm.StillInProgress:
            raise  # SageMaker goes on: what it may still switch to is left in place
        except _deployments.DeploymentError as e:  # failed or rolled back: the old one serves
            self._undo(aws, made, release.data)
            sm.apply_autoscaling(aws, name, old_variants, cfg)
            raise _deployments.DeploymentError(
                f"Update of '{name}' failed; the previous version keeps serving. {e.summary}"
            ) from e
        except BaseException:
            self._undo(aws, made, release.data)
            sm.apply_autoscaling(aws, name, old_variants, cfg)
            raise
        state.retag(
            aws,
            info["EndpointArn"],
            tags,
            state.endpoint_tags(self.target, name, cfg, release),
        )
        if cfg.synchronous:
            kept = [v["VariantName"] for v in variants]
            sm.apply_autoscaling(aws, name, kept, cfg)
            old = [] if cfg.archive else [("endpoint_config", info["EndpointConfigName"])]
            if mode == "replace" and not cfg.archive:
                old += [("model", v["ModelName"]) for v in old_config["ProductionVariants"]]
            self._undo(aws, old, None)
        else:
            self.progress(f"'{name}' is updating; the replaced config and models are kept")
        return state.describe(aws, self.target, self.flavor, name)

    def delete_deployment(self, name: str, config=None) -> None:
        """Delete the endpoint, its endpoint configs and models (those of earlier versions
        too); ``remove_model_data`` / ``remove_image`` also delete the S3 objects and ECR tags.
        No error when there is nothing to delete; an endpoint this target did not make is refused.
        """
        cfg = self.config_class.from_config(config)
        aws = self.session(cfg)
        info = sm.describe_endpoint(aws, name)
        if info is not None:
            tags = state.tags_of(aws, info["EndpointArn"])
            if tags.get(_deployments.LABEL_TARGET) != self.target:
                raise InvalidInputError(
                    f"Endpoint '{name}' was not made by {self.target}: not deleting it"
                )
            variants = aws.call(
                "sagemaker",
                "describe_endpoint_config",
                EndpointConfigName=info["EndpointConfigName"],
            )["ProductionVariants"]
            sm.remove_autoscaling(aws, name, [v["VariantName"] for v in variants])
            _aws.ignore_missing(aws, "sagemaker", "delete_endpoint", EndpointName=name)
            self.progress(f"Endpoint '{name}' deleted")
            remembered = state.remembered_config(tags)
            if cfg.remove_model_data and remembered.get("bucket"):
                # every version's archive, those of replaced versions included
                prefix = "/".join(p for p in (remembered.get("prefix", "").strip("/"), name) if p)
                for key in sm.delete_prefix(aws, remembered["bucket"], prefix + "/"):
                    self.progress(f"Deleted s3://{remembered['bucket']}/{key}")
        for kind in ("endpoint_config", "model"):
            for resource in state.owned(aws, self.target, kind, name):
                if kind == "model" and (cfg.remove_model_data or cfg.remove_image):
                    self._remove_artefacts(aws, resource, cfg)
                self._undo(aws, [(kind, resource)], None)

    # --- list / get / predict -------------------------------------------------------------------

    def list_deployments(self) -> list[dict]:
        """Every endpoint of this target in the region (their tags say so)."""
        aws = self.session(None)
        pages = aws.client("sagemaker").get_paginator("list_endpoints").paginate()
        listed = _aws.translate(lambda: list(pages), "sagemaker.list_endpoints", self.target)
        found = []
        for endpoint in (e for page in listed for e in page["Endpoints"]):
            try:
                tags = state.tags_of(aws, endpoint["EndpointArn"])
                if tags.get(_deployments.LABEL_TARGET) == self.target:
                    found.append(
                        state.describe(aws, self.target, self.flavor, endpoint["EndpointName"])
                    )
            except (_deployments.DeploymentNotFoundError, _aws.AwsError) as e:
                if isinstance(e, _aws.AwsError) and not _aws.is_not_found(e):
                    raise
                _logger.info("Endpoint %s went away while listing", endpoint["EndpointName"])
        return found

    def get_deployment(self, name: str) -> dict:
        """Status, endpoint URL, lineage, variants, autoscaling and config of ``name``."""
        return state.describe(self.session(None), self.target, self.flavor, name)

    def predict(self, deployment_name: str, inputs: Any):
        """Score ``inputs`` with ``invoke_endpoint`` in MLflow's scoring JSON (a DataFrame is
        sent as ``dataframe_split``); returns ``{"predictions": ...}``."""
        from mlflow.deployments import PredictionsResponse

        path, body = _predict.request_body(inputs, deployment_name)
        if path != "/invocations":
            raise InvalidInputError(
                "SageMaker endpoints take MLflow's scoring formats (dataframe_split, "
                "dataframe_records, instances, inputs), not V2 tensors"
            )
        aws = self.session(None)
        try:
            answer = aws.call(
                "sagemaker-runtime",
                "invoke_endpoint",
                EndpointName=deployment_name,
                ContentType="application/json",
                Accept="application/json",
                Body=body,
            )
        except _aws.AwsError as e:
            code, message = _aws.error_of(e.__cause__)
            if code == "ModelError":  # the container answered 4xx/5xx: its message is the reason
                raise InvalidInputError(f"Deployment '{deployment_name}' refused: {message}") from e
            if _aws.is_not_found(e) or "not found" in message.lower():
                raise _deployments.DeploymentNotFoundError(
                    f"No endpoint named '{deployment_name}' in {aws.region}"
                ) from e
            raise
        text = answer["Body"].read()
        try:
            return PredictionsResponse(json.loads(text))
        except ValueError as e:
            raise _deployments.DeploymentError(
                f"Deployment '{deployment_name}' answered non-JSON: {text[:200]!r}"
            ) from e

    # --- parts ------------------------------------------------------------------------------

    def session(self, cfg) -> _aws.AwsSession:
        region = getattr(cfg, "region_name", None) or self.region_name
        return _aws.session_for(region, self.target)

    def docker(self):
        from mlflow_deploy_plugins.targets import _docker

        if self.docker_client is None:
            self.docker_client = _docker.connect(None, self.target)
        return self.docker_client

    def _check(self, cfg) -> None:
        """What create and update need beyond each key's own rule (named in the message)."""
        needed = {
            "execution_role_arn": "the IAM role SageMaker assumes to pull the image and read the "
            "model data (-C execution_role_arn=arn:aws:iam::ACCOUNT:role/NAME)",
            "bucket": "the S3 bucket model.tar.gz is uploaded to (-C bucket=NAME, an existing "
            "bucket in the endpoint's region)",
        }
        for key, what in needed.items():
            if not getattr(cfg, key):
                raise InvalidInputError(
                    f"Config key '{key}' of target '{self.target}' is required: {what}"
                )
        if cfg.max_instances is not None and cfg.serverless_config:
            raise InvalidInputError(
                f"Config key 'max_instances' of target '{self.target}' scales instance "
                "variants; a serverless variant scales itself (MaxConcurrency in "
                "serverless_config): set one of them"
            )
        if cfg.max_instances is not None and cfg.max_instances < cfg.min_instances:
            raise InvalidInputError(
                f"Config key 'max_instances' of target '{self.target}'={cfg.max_instances} is "
                f"below min_instances={cfg.min_instances}"
            )

    def _release(self, aws, name: str, model_uri: str, cfg) -> state.Release:
        """Resolve the model, build and push its image (unless ``image_url``), upload it."""
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
            image = cfg.image_url or self._push(aws, resolved, cfg)
            lineage = {
                _deployments.LABEL_DEPLOYMENT: name,
                _deployments.LABEL_SHA256: resolved.sha256,
            }
            data = sm.upload_bundle(
                aws, resolved.bundle.path, cfg.bucket, cfg.prefix, name, lineage
            )
        self.progress(f"Model data {data.uri} ({data.size / 1e6:.1f} MB, sha256 {data.sha256})")
        return state.Release(resolved, image, data)

    def build_image(self, client, resolved, cfg):
        """The serving image of ``resolved`` (built, or found by its content hash)."""
        return builder.ensure_image_for(
            client,
            resolved,
            cfg,
            recipe=self.recipe,
            repository=cfg.ecr_repository,
            progress=self.progress,
        )

    def _push(self, aws, resolved, cfg) -> str:
        client = self.docker()
        built = self.build_image(client, resolved, cfg)
        repository = built.tag.rsplit(":", 1)[0]
        tags = {_deployments.LABEL_TARGET: self.target, **(cfg.tags or {})}
        return _ecr.push_image(aws, client, built.tag, repository, tags, self.progress).uri

    def _stage(self, aws, name: str, cfg, release, model_name: str, variants) -> list:
        """Create the model and endpoint config of ``release`` (both named ``model_name``);
        on failure delete what was made. Returns ``[(kind, name), ...]`` made."""
        made: list[tuple[str, str]] = []
        try:
            tags = state.resource_tags(self.target, name, cfg, release)
            sm.create_model(aws, model_name, cfg, release.image, release.data, tags)
            made.append(("model", model_name))
            tags = state.resource_tags(self.target, name, cfg)
            sm.create_endpoint_config(aws, model_name, cfg, variants, tags)
            made.append(("endpoint_config", model_name))
        except BaseException:
            self._undo(aws, made, release.data)
            raise
        return made

    def _undo(self, aws, made: list[tuple[str, str]], data: sm.ModelData | None) -> None:
        """Delete resources (newest first); failures are logged, the cause stays the error."""
        for kind, resource in reversed(made):
            operation, key = {
                "endpoint": ("delete_endpoint", "EndpointName"),
                "endpoint_config": ("delete_endpoint_config", "EndpointConfigName"),
                "model": ("delete_model", "ModelName"),
            }[kind]
            try:
                if _aws.ignore_missing(aws, "sagemaker", operation, **{key: resource}):
                    self.progress(f"Deleted {kind.replace('_', ' ')} {resource}")
            except _deployments.DeploymentError as e:
                _logger.error("Could not delete %s %s: %s", kind, resource, e)
        if data is not None and data.created:  # an archive an earlier version uses stays
            _aws.ignore_missing(aws, "s3", "delete_object", Bucket=data.bucket, Key=data.key)

    def _remove_artefacts(self, aws, model_name: str, cfg) -> None:
        try:
            container = aws.call("sagemaker", "describe_model", ModelName=model_name)[
                "PrimaryContainer"
            ]
        except _aws.AwsError as e:
            if _aws.is_not_found(e):
                return
            raise
        if cfg.remove_model_data and container.get("ModelDataUrl"):
            bucket, key = sm.split_s3_uri(container["ModelDataUrl"])
            if _aws.ignore_missing(aws, "s3", "delete_object", Bucket=bucket, Key=key):
                self.progress(f"Deleted {container['ModelDataUrl']}")
        image = container.get("Image", "")
        if cfg.remove_image and ".dkr.ecr." in image and ":" in image.split("/", 1)[-1]:
            repository, tag = image.split("/", 1)[1].rsplit(":", 1)
            if _ecr.delete_image(aws, repository, tag):
                self.progress(f"Deleted ECR image {image}")


def check_endpoint_name(name: str) -> str:
    """A deployment name that is also a valid SageMaker endpoint name.

    Raises:
        InvalidInputError: not 1-63 letters, digits or '-' starting with a letter or digit.
    """
    _deployments.validate_name(name)
    if not set(name) <= _ENDPOINT_CHARS or name.endswith("-"):
        raise InvalidInputError(
            f"Deployment name {name!r} is not a valid SageMaker endpoint name: use 1-63 "
            "letters, digits and '-' (no '_' or '.'), starting and ending with a letter or digit"
        )
    return name


def _weight(cfg, default: float) -> float:
    return default if cfg.variant_weight is None else cfg.variant_weight
