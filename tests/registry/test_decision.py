"""The reconcile decision as a table: source slot state x twin slot state -> one action."""

from __future__ import annotations

import pytest

from mlflow_deploy_plugins.registry.decision import (
    Action,
    Slot,
    SlotState,
    decide,
    explain,
    overrides_someone,
)

PROMOTE, REMOVE, KEEP = Action.PROMOTE, Action.REMOVE, Action.KEEP
SKIP, UP = Action.SKIP_FAILED, Action.UP_TO_DATE


@pytest.mark.parametrize(
    ("state", "remove_on_delete", "retry_failed", "expected"),
    [
        # the source slot points at a version
        (SlotState("3"), True, False, PROMOTE),  # no twin yet
        (SlotState("3", ("1",), "2"), True, False, PROMOTE),  # twin follows an older version
        (SlotState("2", ("1",), "2"), True, False, UP),  # twin follows it
        (SlotState("2", ("5", "4"), "2"), True, False, UP),  # stage: the newest one counts
        (SlotState("2", ("5", "4"), "1"), True, False, PROMOTE),
        # deployments: every one must serve the twin version
        (SlotState("2", ("1",), "2", ("1", "1")), True, False, UP),
        (SlotState("2", ("1",), "2", ("1", None)), True, False, PROMOTE),
        (SlotState("2", ("2",), "2", ("1",)), True, False, PROMOTE),
        # a version that failed before: only an explicit promotion retries it
        (SlotState("3", ("1",), "2", source_failed=True), True, False, SKIP),
        (SlotState("3", ("1",), "2", source_failed=True), True, True, PROMOTE),
        (SlotState("2", ("1",), "2", source_failed=True), True, False, UP),  # in sync wins
        # the source slot is gone
        (SlotState(None), True, False, UP),
        (SlotState(None, ("1",), "1", twin_set_by="webhook"), True, False, REMOVE),
        (SlotState(None, ("1",), "1", twin_set_by="watch"), False, False, KEEP),
        (SlotState(None, ("4", "3"), twin_set_by="watch"), True, True, REMOVE),
        # ... but what a person or promote() set (or a twin from before the records) stays
        (SlotState(None, ("1",), "1", twin_set_by="promote"), True, False, KEEP),
        (SlotState(None, ("1",), "1", twin_set_by="person"), True, False, KEEP),
        (SlotState(None, ("1",), "1"), True, True, KEEP),
    ],
)
def test_decision_table(state, remove_on_delete, retry_failed, expected):
    action = decide(state, remove_on_delete=remove_on_delete, retry_failed=retry_failed)
    assert action is expected
    assert action.needs_work is (expected in (PROMOTE, REMOVE))


def test_every_decision_has_a_reason_naming_who_set_the_twin():
    action, reason = explain(
        SlotState(None, ("3",), "2", twin_set_by="promote"), remove_on_delete=True
    )
    assert action is KEEP and "promote()" in reason and "v3" in reason
    action, reason = explain(SlotState(None, ("3",), "2"), remove_on_delete=True)
    assert action is KEEP and "a person" in reason
    action, reason = explain(SlotState("4", ("3",), "2"), remove_on_delete=True)
    assert action is PROMOTE and "v2" in reason and "v4" in reason


def test_undoing_a_persons_twin_alias_is_said():
    # a rollback done by hand on the twin: the source's alias still decides (documented), but
    # the reason (logged as a warning) names what is overridden and where to roll back
    rolled_back = SlotState("2", ("1",), "1", twin_set_by="person")
    action, reason = explain(rolled_back, remove_on_delete=True)
    assert action is PROMOTE and overrides_someone(rolled_back)
    assert "overriding twin v1, which a person set: roll back on the source" in reason
    for who in ("watch", "webhook", "promote"):
        state = SlotState("2", ("1",), "1", twin_set_by=who)
        assert (
            not overrides_someone(state)
            and "overriding" not in explain(state, remove_on_delete=True)[1]
        )
    assert not overrides_someone(SlotState("2", ("1",), "2", twin_set_by="person"))  # in line


def test_twin_version_is_the_newest_in_the_slot():
    assert SlotState("1", ("7", "3")).twin_version == "7"
    assert SlotState("1").twin_version is None


def test_slots_print_as_alias_or_stage():
    assert str(Slot("churn", "alias", "champion")) == "churn@champion"
    assert str(Slot("churn", "stage", "Production")) == "churn[Production]"
