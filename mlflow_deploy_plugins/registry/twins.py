"""Which twin version a promotion re-uses: the converted one with the promotion's idempotency
key (the lowest, if a race ever left two), only while its model file is intact, and the first
of concurrent promotions of the same source version."""

from __future__ import annotations

import logging
import time

from mlflow.entities.model_registry import ModelVersion

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.registry.gateway import RegistryGateway

_logger = logging.getLogger(__name__)

#: How long a promotion waits for a concurrent one of the same source version that registered
#: its twin first; a pending twin older than STALE_PENDING_S is a crashed promotion's leftover.
CONCURRENT_WAIT_S = 300.0
STALE_PENDING_S = 900.0


def find_converted(registry: RegistryGateway, onnx_name: str, key: str) -> ModelVersion | None:
    """The converted twin version with idempotency ``key`` (the lowest number), or None."""
    found = [
        mv
        for mv in registry.model_versions(onnx_name)
        if mv.tags.get(tag_keys.IDEMPOTENCY_KEY) == key
        and mv.tags.get(tag_keys.STATUS) == tag_keys.STATUS_CONVERTED
    ]
    return min(found, key=lambda mv: int(mv.version), default=None)


def earlier_twin(registry: RegistryGateway, onnx_name: str, key: str, ours: str) -> str | None:
    """The twin version a concurrent promotion of the same source version and options created
    before ``ours``, once it is converted: the lowest number wins, so concurrent promotions agree
    on one twin. None when ours is the first, or the earlier one failed, vanished or is a stale
    leftover of a crashed process (pending for longer than ``STALE_PENDING_S``)."""
    deadline = time.monotonic() + CONCURRENT_WAIT_S
    while True:
        now_ms = time.time() * 1000
        earlier = [
            mv
            for mv in registry.model_versions(onnx_name)
            if mv.tags.get(tag_keys.IDEMPOTENCY_KEY) == key
            and int(mv.version) < int(ours)
            and (
                mv.tags.get(tag_keys.STATUS) == tag_keys.STATUS_CONVERTED
                or mv.tags.get(tag_keys.STATUS) == "pending"
                and now_ms - (mv.creation_timestamp or 0) < STALE_PENDING_S * 1000
            )
        ]
        if not earlier:
            return None
        first = min(earlier, key=lambda mv: int(mv.version))
        if first.tags.get(tag_keys.STATUS) == tag_keys.STATUS_CONVERTED:
            return str(first.version)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)  # the earlier promotion is finishing its registration


def intact(registry: RegistryGateway, onnx_name: str, mv: ModelVersion) -> bool:
    """Whether a converted twin's model file is still the one that passed the gate. A modified
    one is never re-used: its version is tagged failed with the reason (so no later promotion
    re-uses it either) and the source is converted again."""
    from mlflow_deploy_plugins.bundle import check_model_file

    try:
        check_model_file(f"models:/{onnx_name}/{mv.version}")
    except InvalidInputError as e:
        _logger.warning("Not re-using %s v%s: %s", onnx_name, mv.version, e.message)
        registry.set_version_tags(
            onnx_name,
            str(mv.version),
            {tag_keys.STATUS: tag_keys.STATUS_FAILED, tag_keys.ERROR: tag_keys.clip(e.message)},
        )
        return False
    return True
