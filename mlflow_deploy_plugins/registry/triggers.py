"""What the promotion automation passes around: a trigger in (why to look at a slot now), an
outcome out (what the pipeline did about it)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from mlflow_deploy_plugins.registry.decision import Slot

_logger = logging.getLogger(__name__)


@dataclass
class Trigger:
    """Why a slot should be looked at now (a webhook delivery, a poll, a reconcile pass)."""

    slot: Slot
    event: str  # model_version_alias.created | model_version_alias.deleted | reconcile | poll
    version: str | None = None  # what the event said; the registry decides
    explicit: bool = False  # a promotion just happened: retry a version that failed before
    delivery_ids: tuple[str, ...] = ()
    enqueued_at: float = field(default_factory=time.monotonic)
    received_at: float = field(default_factory=time.time)

    def merge(self, newer: Trigger) -> Trigger:
        """One pending job per slot: the newer trigger's facts, both triggers' ids."""
        ids = self.delivery_ids + tuple(i for i in newer.delivery_ids if i not in self.delivery_ids)
        return replace(
            newer,
            explicit=self.explicit or newer.explicit,
            delivery_ids=ids,
            received_at=min(self.received_at, newer.received_at),
        )


@dataclass
class Outcome:
    """What the pipeline did for one trigger."""

    slot: Slot
    # converted | reused | removed | failed | refused | up_to_date | covered | skipped | ignored
    result: str
    source_version: str | None = None
    onnx_version: str | None = None
    reason: str | None = None
    deployments: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result not in ("failed", "refused")

    def __str__(self) -> str:
        parts = [f"{self.slot}: {self.result}"]
        if self.source_version:
            parts.append(f"source v{self.source_version}")
        if self.onnx_version:
            parts.append(f"ONNX v{self.onnx_version}")
        if self.deployments:
            parts.append("deployed to " + ", ".join(self.deployments))
        if self.reason:
            parts.append(f"({self.reason})")
        return " ".join(parts)
