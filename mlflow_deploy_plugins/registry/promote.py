"""Promotion: source model version -> verified ONNX twin version -> alias/stage, in that order.

Write order (binding): register the ONNX version, write its tags, set the alias last. A failure
before the alias moves deletes the new version (or tags it failed), tags the source version with
the reason and re-raises: no alias ever points at an unverified model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import (
    DeployPluginError,
    InvalidInputError,
    ModelNotFoundError,
)
from mlflow_deploy_plugins.onnx import parity
from mlflow_deploy_plugins.onnx.convert import DEFAULT_REFERENCE_ROWS, ConversionResult, convert
from mlflow_deploy_plugins.onnx.converters.base import ConversionOptions
from mlflow_deploy_plugins.registry import ownership, twins
from mlflow_deploy_plugins.registry.conversion_run import log_conversion_run
from mlflow_deploy_plugins.registry.gateway import RegistryGateway, alias_version, is_already_exists
from mlflow_deploy_plugins.registry.trust import warn_if_pickle

_logger = logging.getLogger(__name__)

VALID_STAGES = ("Staging", "Production", "Archived", "None")


@dataclass
class PromotionResult:
    source_name: str
    source_version: str
    onnx_name: str
    onnx_version: str
    alias: str | None
    stage: str | None
    reused: bool  # True when an earlier conversion with the same key was re-used
    run_id: str | None
    parity: dict

    @property
    def model_uri(self) -> str:
        if self.alias:
            return f"models:/{self.onnx_name}@{self.alias}"
        return f"models:/{self.onnx_name}/{self.onnx_version}"

    def summary(self) -> str:
        what = "re-used" if self.reused else "converted"
        where = ", ".join(
            x
            for x in (
                f"alias '{self.alias}'" if self.alias else "",
                f"stage '{self.stage}'" if self.stage else "",
            )
            if x
        )
        return (
            f"{self.source_name} v{self.source_version} -> {self.onnx_name} v{self.onnx_version} "
            f"({what}){'; ' + where if where else ''}; parity passed={self.parity.get('passed')}"
        )


def default_onnx_name(name: str) -> str:
    return f"{name}-onnx"


def idempotency_key(name: str, version: str, options_hash: str) -> str:
    return f"{name}/{version}/{options_hash}"


def promote(
    name: str,
    version: int | str,
    alias: str | None = "champion",
    *,
    stage: str | None = None,
    sample=None,
    onnx_name: str | None = None,
    atol: float = parity.DEFAULT_ATOL,
    rtol: float = parity.DEFAULT_RTOL,
    min_label_agreement: float = parity.DEFAULT_MIN_LABEL_AGREEMENT,
    quantize: bool = False,
    target_opset: int | None = None,
    reference_rows: int = DEFAULT_REFERENCE_ROWS,
    experiment_name: str | None = None,
    client: MlflowClient | None = None,
    alias_source: bool = True,
    promoted_by: str = ownership.BY_PROMOTE,
    check_source: Callable[[str], object] | None = None,
) -> PromotionResult:
    """Convert a registered model version to ONNX, gate it on parity, register and alias it.

    Args:
        name: registered model name of the source.
        version: its version number.
        alias: alias to set on the ONNX version once it passed the gate (None: no alias).
        stage: legacy stage to move the ONNX version to (``Staging``, ``Production``, ...).
        sample: validation data for the parity gate, kept as the reference sample.
        onnx_name: registered model for the ONNX twin (default ``<name>-onnx``).
        atol, rtol, min_label_agreement: parity tolerances.
        quantize: dynamic int8 quantisation (checked by the gate too).
        experiment_name: where the conversion run is logged (default: the source run's).
        alias_source: also set ``alias`` on the source version (once the twin has it), so the
            registry reads the same from both sides and the automation sees a promotion, not a
            deleted alias.
        promoted_by: the path recorded on the twin (``promote``; the automation passes
            ``webhook`` or ``watch``). What ``promote`` set, the automation never takes away.
        check_source: called with the source URI just before the model is loaded (not when an
            earlier conversion is re-used); the automation refuses untrusted formats there.
            Default: log a warning naming the format when it is pickle or cloudpickle.

    Returns:
        PromotionResult naming the ONNX version and whether it was re-used.

    Raises:
        ModelNotFoundError, InvalidInputError, UnsupportedModelError, ConversionError,
        ParityError: nothing is aliased, the source version carries the reason in tags.
    """
    registry = RegistryGateway(client)
    version = _check_version_arg(version)
    if alias is None and stage is None:
        raise InvalidInputError("promote() needs alias= or stage= (or both)")
    if stage is not None and stage not in VALID_STAGES:
        raise InvalidInputError(f"stage must be one of {VALID_STAGES}, got {stage!r}")
    _check_alias_name(alias)
    source_mv = _get_source_version(registry, name, version)
    onnx_name = onnx_name or default_onnx_name(name)
    if onnx_name == name:
        raise InvalidInputError("onnx_name must differ from the source model's name")
    options = ConversionOptions(
        **({"target_opset": target_opset} if target_opset else {}),
        extra={"quantize": bool(quantize)},
    )
    key = idempotency_key(name, version, options.fingerprint())
    twin_exists = _check_onnx_registered_model(registry, onnx_name)

    existing = twins.find_converted(registry, onnx_name, key) if twin_exists else None
    if existing is not None and not twins.intact(registry, onnx_name, existing):
        existing = None  # converted again below, into a new version
    if existing is not None:
        _logger.info(
            "%s v%s already converted as %s v%s: moving alias/stage only",
            name,
            version,
            onnx_name,
            existing.version,
        )
        _move(registry, name, version, onnx_name, existing.version, alias, stage, promoted_by)
        if alias_source:
            _alias_source(registry, name, version, alias)
        return PromotionResult(
            name,
            version,
            onnx_name,
            str(existing.version),
            alias,
            stage,
            True,
            existing.tags.get(tag_keys.RUN_ID),
            _parity_from_tags(existing.tags),
        )

    source_uri = f"models:/{name}/{version}"
    (check_source or warn_if_pickle)(source_uri)
    try:
        result = convert(
            source_uri,
            sample=sample,
            atol=atol,
            rtol=rtol,
            min_label_agreement=min_label_agreement,
            quantize=quantize,
            target_opset=target_opset,
            reference_rows=reference_rows,
        )
    except MlflowException as e:  # DeployPluginError included
        registry.tag_source_failed(name, version, e)
        raise
    except Exception as e:  # a library error no converter translated: still tag the source
        registry.tag_source_failed(name, version, e)
        raise DeployPluginError(
            f"Conversion of {name} v{version} failed: {type(e).__name__}: {e}"
        ) from e

    onnx_version, run_id, reused = None, None, False
    created = None  # the twin version this call registered (undone on failure)
    try:
        if not twin_exists:
            _create_onnx_registered_model(registry, onnx_name, name)
        run_id, model_uri, model_id = log_conversion_run(result, source_mv, key, experiment_name)
        mv = registry.client.create_model_version(
            onnx_name,
            source=model_uri,
            run_id=run_id,
            # a tracking server refuses a models:/<model_id> source without its model_id
            model_id=model_id,
            # the key from the first moment: a concurrent promotion of the same source version
            # sees this one (see twins.earlier_twin)
            tags={tag_keys.STATUS: "pending", tag_keys.IDEMPOTENCY_KEY: key},
            description=f"ONNX twin of {name} v{version}",
        )
        onnx_version = created = str(mv.version)
        registry.wait_until_ready(onnx_name, onnx_version)
        registry.set_version_tags(
            onnx_name,
            onnx_version,
            {
                tag_keys.KIND: "onnx",
                tag_keys.SOURCE_MODEL: name,
                tag_keys.SOURCE_VERSION: version,
                tag_keys.IDEMPOTENCY_KEY: key,
                tag_keys.OPTIONS_HASH: options.fingerprint(),
                tag_keys.CONVERTER: f"{result.converter}=={result.converter_version}",
                tag_keys.RUN_ID: run_id,
                **tag_keys.parity_tags(result.parity),
            },
        )
        # written last, on its own: "converted" means every tag above is there
        registry.set_version_tags(
            onnx_name, onnx_version, {tag_keys.STATUS: tag_keys.STATUS_CONVERTED}
        )
        earlier = twins.earlier_twin(registry, onnx_name, key, onnx_version)
        if earlier is not None:  # the same promotion ran concurrently and registered first
            duplicate = DeployPluginError(
                f"a duplicate of {onnx_name} v{earlier}, registered first by a concurrent "
                f"promotion of {name} v{version}"
            )
            _undo_version(registry, onnx_name, created, duplicate)
            onnx_version, created, reused = earlier, None, True
        _tag_source_converted(registry, name, version, onnx_name, onnx_version, result)
        _move(registry, name, version, onnx_name, onnx_version, alias, stage, promoted_by)
    except Exception as e:
        _undo_version(registry, onnx_name, created, e)
        registry.tag_source_failed(name, version, e)
        if isinstance(e, MlflowException):
            raise
        raise DeployPluginError(f"Promotion of {name} v{version} failed: {e}") from e
    if alias_source:
        _alias_source(registry, name, version, alias)
    out = PromotionResult(
        name,
        version,
        onnx_name,
        onnx_version,
        alias,
        stage,
        reused,
        run_id,
        {**result.parity.metrics(""), "passed": result.parity.passed},
    )
    _logger.info(out.summary())
    return out


# --------------------------------------------------------------------------- helpers
def _check_version_arg(version) -> str:
    text = str(version).strip()
    if not text.isdigit():
        raise InvalidInputError(
            f"version must be a model version number, got {version!r} "
            "(to promote by alias, resolve it first: MlflowClient().get_model_version_by_alias)"
        )
    return text


def _check_alias_name(alias: str | None) -> None:
    """MLflow reserves 'latest' and 'v<number>': refuse them before any work is done."""
    if alias is None:
        return
    if not alias or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidInputError(
            f"alias {alias!r} is not allowed: MLflow reserves 'latest' and 'v<number>'"
        )


def _get_source_version(registry: RegistryGateway, name: str, version: str) -> ModelVersion:
    if registry.registered_model(name) is None:
        raise ModelNotFoundError(f"Registered model '{name}' does not exist")
    source_mv = registry.model_version(name, version)
    if source_mv is None:
        raise ModelNotFoundError(f"Registered model '{name}' has no version {version}")
    return source_mv


def _check_onnx_registered_model(registry: RegistryGateway, onnx_name: str) -> bool:
    """True when the twin exists; refuses a registered model of that name that is not ours."""
    rm = registry.registered_model(onnx_name)
    if rm is None:
        return False
    if rm.tags.get(tag_keys.KIND) != "onnx":
        raise InvalidInputError(
            f"Registered model '{onnx_name}' exists and was not created by mlflow-deploy-plugins "
            f"(no tag {tag_keys.KIND}=onnx); pass onnx_name= to use another name"
        )
    return True


def _create_onnx_registered_model(registry: RegistryGateway, onnx_name: str, source: str) -> None:
    try:
        registry.client.create_registered_model(
            onnx_name,
            tags={tag_keys.KIND: "onnx", tag_keys.SOURCE_MODEL: source},
            description=f"Verified ONNX versions of '{source}' (mlflow-deploy-plugins)",
        )
    except MlflowException as e:  # created meanwhile by a concurrent promotion
        if not is_already_exists(e):
            raise
        _check_onnx_registered_model(registry, onnx_name)


def _parity_from_tags(tags: dict) -> dict:
    """The parity figures of a re-used version, typed like a fresh promotion's."""
    out = {}
    for key, value in tags.items():
        if not key.startswith(tag_keys.PARITY_PREFIX):
            continue
        if value in ("true", "false"):
            out[key[len(tag_keys.PARITY_PREFIX) :]] = value == "true"
            continue
        try:
            out[key[len(tag_keys.PARITY_PREFIX) :]] = float(value)
        except ValueError:
            out[key[len(tag_keys.PARITY_PREFIX) :]] = value
    return out


def _move(
    registry: RegistryGateway,
    name: str,
    version: str,
    onnx_name: str,
    onnx_version: str,
    alias: str | None,
    stage: str | None,
    promoted_by: str,
) -> None:
    """Record who promotes (tags first), then move the twin's stage and alias."""
    client = registry.client
    registry.set_version_tags(onnx_name, onnx_version, ownership.version_tags(version, promoted_by))
    for kind, label in (("stage", stage), ("alias", alias)):
        if label is not None:
            record = ownership.record_tags(kind, label, version, onnx_version, promoted_by)
            for key, value in record.items():
                client.set_registered_model_tag(onnx_name, key, value)
    if stage is not None:
        client.transition_model_version_stage(onnx_name, onnx_version, stage)
    if alias is not None:
        client.set_registered_model_alias(onnx_name, alias, onnx_version)


def _alias_source(registry: RegistryGateway, name: str, version: str, alias: str | None) -> None:
    """Point the source's ``alias`` at ``version`` too (after the twin's: never ahead of it)."""
    if alias is None:
        return
    if alias_version(registry.registered_model(name), alias) == str(version):
        return  # already there: no second alias event for the automation
    registry.client.set_registered_model_alias(name, alias, version)
    _logger.info(
        "Set alias '%s' on the source %s v%s too (alias_source=True)", alias, name, version
    )


def _tag_source_converted(
    registry: RegistryGateway,
    name: str,
    version: str,
    onnx_name: str,
    onnx_version: str,
    result: ConversionResult,
) -> None:
    registry.set_version_tags(
        name,
        version,
        {
            tag_keys.STATUS: tag_keys.STATUS_CONVERTED,
            tag_keys.ONNX_MODEL: onnx_name,
            tag_keys.ONNX_VERSION: str(onnx_version),
            **tag_keys.parity_tags(result.parity),
        },
    )
    registry.delete_version_tag(name, version, tag_keys.ERROR)


def _undo_version(
    registry: RegistryGateway, onnx_name: str, onnx_version: str | None, error: Exception
) -> None:
    if onnx_version is None:
        return
    try:
        registry.client.delete_model_version(onnx_name, onnx_version)
        _logger.warning("Deleted %s v%s: %s", onnx_name, onnx_version, error)
    except MlflowException:  # cannot delete it: make sure nobody takes it for a verified one
        registry.set_version_tags(
            onnx_name,
            onnx_version,
            {tag_keys.STATUS: tag_keys.STATUS_FAILED, tag_keys.ERROR: error},
        )
