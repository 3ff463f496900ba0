"""The reconcile decision: what one slot needs, given the source's and the twin's registry state.

Pure (no registry, no clock), so the pipeline and the poller agree on "in sync" by construction.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from mlflow_deploy_plugins.registry.ownership import AUTOMATION, BY_PERSON

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
        twin_set_by: who set the twin's slot as it is now (``registry/ownership.py``):
            ``webhook``/``watch`` (the automation), ``promote`` or ``person``.
    """

    source_version: str | None
    twin_versions: tuple[str, ...] = ()
    twin_source_version: str | None = None
    deployed_versions: tuple[str | None, ...] = ()
    source_failed: bool = False
    twin_set_by: str = BY_PERSON

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
    #: The source's alias/stage is gone, but the twin's stays: ``remove_alias_on_delete`` is
    #: false, or a person or ``promote()`` set it (the automation only undoes its own work).
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
    """The action that brings a slot's twin in line with its source (see :func:`explain`)."""
    return explain(state, remove_on_delete=remove_on_delete, retry_failed=retry_failed)[0]


def overrides_someone(state: SlotState) -> bool:
    """Whether bringing the twin in line undoes what a person set on it by hand (e.g. a rollback
    done on the twin): the source's alias decides (docs/automation.md), but says so loudly."""
    return (
        state.source_version is not None
        and state.twin_version is not None
        and state.twin_source_version != state.source_version
        and state.twin_set_by == BY_PERSON
    )


def explain(
    state: SlotState, *, remove_on_delete: bool, retry_failed: bool = False
) -> tuple[Action, str]:
    """The action that brings a slot's twin in line with its source, and why.

    Args:
        state: both sides of the slot, as read from the registry.
        remove_on_delete: remove the twin's alias/stage when the source's is gone.
        retry_failed: promote a version whose last attempt failed (an explicit promotion).

    Returns:
        The one action to take and its reason; the latest registry state decides, whatever the
        event said.
    """
    source, twin = state.source_version, state.twin_version
    if source is None:
        if not state.twin_versions:
            return Action.UP_TO_DATE, "neither side is set"
        if state.twin_set_by not in AUTOMATION:
            who = "promote()" if state.twin_set_by == "promote" else "a person"
            return Action.KEEP, (
                f"the source is not set, but twin v{twin} was set by {who}, "
                "not by the automation: never removed"
            )
        if not remove_on_delete:
            return Action.KEEP, "the source is not set; remove_alias_on_delete is false"
        return Action.REMOVE, (
            f"the source is not set any more; twin v{twin} was set by the automation "
            f"({state.twin_set_by})"
        )
    if state.twin_source_version == source and all(
        deployed == twin for deployed in state.deployed_versions
    ):
        return Action.UP_TO_DATE, f"twin v{twin} follows source v{source}"
    if state.source_failed and not retry_failed:
        return Action.SKIP_FAILED, f"source v{source} failed before and was not promoted again"
    if twin is None:
        return Action.PROMOTE, f"source v{source} has no twin in this slot"
    if state.twin_source_version != source:
        reason = (
            f"twin v{twin} follows source v{state.twin_source_version}, the source is at v{source}"
        )
        if overrides_someone(state):
            reason += f"; overriding twin v{twin}, which a person set: roll back on the source"
        return Action.PROMOTE, reason
    return Action.PROMOTE, f"a deployment does not serve twin v{twin} yet"
