"""The reconcile decision: what one slot needs, given the source's and the twin's registry state.

Pure (no registry, no clock), so the pipeline and the poller agree on "in sync" by construction.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """A source model's alias (``kind="alias"``) or legacy stage (``kind="stage"``)."""

    model: str
    kind: str
    label: str

    def __str__(self) -> str:
        return (
            f"{self.model}@{self.label}" if self.kind == "alias" else f"{self.model}[{self.label}]"
        )


@dataclass(frozen=True)
class SlotState:
    """What the registry says about one slot, on both sides.

    Attributes:
        source_version: the source version the slot points at (None: alias deleted, stage empty).
        twin_versions: twin versions in the same slot, newest first (an alias: at most one).
        twin_source_version: the source version the newest of them was converted from.
        deployed_versions: per configured deployment, the twin version it serves (None: none).
        source_failed: the source version's last promotion attempt failed.
    """

    source_version: str | None
    twin_versions: tuple[str, ...] = ()
    twin_source_version: str | None = None
    deployed_versions: tuple[str | None, ...] = ()
    source_failed: bool = False

    @property
    def twin_version(self) -> str | None:
        """The twin version the slot points at (the newest one for a stage)."""
        return self.twin_versions[0] if self.twin_versions else None


class Action(enum.Enum):
    """What closes the gap between a source slot and its twin."""

    #: Convert (or re-use) the version the source points at, then deploy it.
    PROMOTE = "promote"
    #: The source's alias/stage is gone: take the twin's away too.
    REMOVE = "remove"
    #: The source's alias/stage is gone, but ``remove_alias_on_delete`` keeps the twin's.
    KEEP = "keep"
    #: This version failed before and nobody set the alias again: do not retry on every event.
    SKIP_FAILED = "skip_failed"
    #: The twin (and every deployment) already follows the source.
    UP_TO_DATE = "up_to_date"

    @property
    def needs_work(self) -> bool:
        """True for the actions that write to the registry (or a deployment target)."""
        return self in (Action.PROMOTE, Action.REMOVE)


def decide(state: SlotState, *, remove_on_delete: bool, retry_failed: bool = False) -> Action:
    """The action that brings a slot's twin in line with its source.

    Args:
        state: both sides of the slot, as read from the registry.
        remove_on_delete: remove the twin's alias/stage when the source's is gone.
        retry_failed: promote a version whose last attempt failed (an explicit promotion).

    Returns:
        The one action to take; the latest registry state decides, whatever the event said.
    """
    if state.source_version is None:
        if not state.twin_versions:
            return Action.UP_TO_DATE
        return Action.REMOVE if remove_on_delete else Action.KEEP
    if state.twin_source_version == state.source_version and all(
        deployed == state.twin_version for deployed in state.deployed_versions
    ):
        return Action.UP_TO_DATE
    if state.source_failed and not retry_failed:
        return Action.SKIP_FAILED
    return Action.PROMOTE
