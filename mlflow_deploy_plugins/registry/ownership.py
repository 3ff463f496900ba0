"""Who set a twin's alias or stage: the promotion record the automation trusts.

Every promotion writes, on the twin registered model, one record per slot (alias or stage):
which source version it follows, which twin version it set, by which path (``promote`` for
:func:`~mlflow_deploy_plugins.registry.promote.promote` and the CLI, ``webhook`` for the
receiver, ``watch`` for the poller) and when. The reconciler only takes away what the
automation itself set: a slot whose record is missing (a twin from before these tags, an alias a
person set in the UI), was written by ``promote()``, or names another twin version than the one
the slot points at now (a person moved it since) belongs to a person and is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone

from mlflow_deploy_plugins.core import tags as tag_keys

BY_PROMOTE = "promote"
BY_WEBHOOK = "webhook"
BY_WATCH = "watch"
#: The paths that are the automation: what they set, they may take away.
AUTOMATION = (BY_WEBHOOK, BY_WATCH)
#: A slot without a (matching) record: set by a person, never removed by the automation.
BY_PERSON = "person"

SOURCE_VERSION = "source_version"
TWIN_VERSION = "version"
SET_BY = "set_by"
SET_AT = "set_at"


def record_prefix(kind: str, label: str) -> str:
    """``mlflow_deploy.alias.<alias>.`` or ``mlflow_deploy.stage.<stage>.`` (twin model tags)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", label)
    return f"{tag_keys.PREFIX}{kind}.{safe}."


def record_tags(
    kind: str, label: str, source_version: str, twin_version: str, set_by: str
) -> dict[str, str]:
    """The registered-model tags recording one promotion of a slot."""
    prefix = record_prefix(kind, label)
    return {
        prefix + SOURCE_VERSION: str(source_version),
        prefix + TWIN_VERSION: str(twin_version),
        prefix + SET_BY: set_by,
        prefix + SET_AT: utc_now(),
    }


def version_tags(source_version: str, set_by: str) -> dict[str, str]:
    """The twin-version tags of its latest promotion (besides ``source_version``)."""
    return {
        tag_keys.SOURCE_VERSION: str(source_version),
        tag_keys.PROMOTED_BY: set_by,
        tag_keys.PROMOTED_AT: utc_now(),
    }


def slot_owner(
    twin_tags: Mapping[str, str] | None, kind: str, label: str, twin_version: str | None
) -> str:
    """Who set the slot as it is now: ``promote``, ``webhook``, ``watch`` or ``person``.

    Args:
        twin_tags: the twin registered model's tags (None: no twin).
        kind, label: the slot.
        twin_version: the twin version the slot points at now (the newest, for a stage).
    """
    if not twin_tags or twin_version is None:
        return BY_PERSON
    prefix = record_prefix(kind, label)
    recorded = twin_tags.get(prefix + TWIN_VERSION)
    set_by = twin_tags.get(prefix + SET_BY)
    if recorded != str(twin_version) or set_by not in (BY_PROMOTE, *AUTOMATION):
        return BY_PERSON
    return set_by


def path_of(event: str) -> str:
    """The promotion path of an automation trigger's event (``poll``: the watcher)."""
    return BY_WATCH if event == "poll" else BY_WEBHOOK


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
