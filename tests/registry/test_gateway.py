"""The registry gateway on a real local registry (SQLite): absent is None, other errors raise,
paged searches, stage lookups, clipped and best-effort tag writes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import ParityError
from mlflow_deploy_plugins.registry.gateway import (
    RegistryGateway,
    alias_version,
    error_message,
    is_already_exists,
    is_not_found,
    paged,
)


@pytest.fixture
def registry(tracking_uri):
    client = MlflowClient()
    client.create_registered_model("churn")
    for i in range(3):
        client.create_model_version("churn", source=f"s3://fake-bucket/churn/{i + 1}")
    return RegistryGateway(client)


def test_not_found_is_told_from_other_errors():
    assert is_not_found(MlflowException("gone", RESOURCE_DOES_NOT_EXIST))
    assert not is_not_found(MlflowException("bad", INVALID_PARAMETER_VALUE))
    assert is_already_exists(MlflowException("there", RESOURCE_ALREADY_EXISTS))
    assert not is_already_exists(MlflowException("gone", RESOURCE_DOES_NOT_EXIST))


def test_absent_models_and_versions_are_none(registry):
    assert registry.registered_model("nobody") is None
    assert registry.model_version("nobody", "1") is None
    assert registry.model_version("churn", "9") is None
    assert registry.registered_model("churn").name == "churn"
    assert str(registry.model_version("churn", "2").version) == "2"


def test_errors_other_than_not_found_are_raised():
    def refuse(*_):
        raise MlflowException("registry says no", INVALID_PARAMETER_VALUE)

    gateway = RegistryGateway(SimpleNamespace(get_registered_model=refuse))
    with pytest.raises(MlflowException, match="registry says no"):
        gateway.registered_model("churn")


def test_paged_reads_every_page():
    pages = {None: PagedList([1, 2], "p2"), "p2": PagedList([3], "p3"), "p3": PagedList([], None)}
    calls = []

    def search(page_token=None, **kwargs):
        calls.append((page_token, kwargs))
        return pages[page_token]

    assert list(paged(search, max_results=2)) == [1, 2, 3]
    assert calls == [
        (None, {"max_results": 2}),
        ("p2", {"max_results": 2}),
        ("p3", {"max_results": 2}),
    ]


def test_registered_models_lists_past_one_page(registry, monkeypatch):
    for name in ("a", "b"):
        registry.client.create_registered_model(name)
    real = registry.client.search_registered_models
    monkeypatch.setattr(
        registry.client,
        "search_registered_models",
        lambda max_results, page_token=None: real(max_results=1, page_token=page_token),
    )
    assert sorted(rm.name for rm in registry.registered_models()) == ["a", "b", "churn"]


def test_stage_lookups_are_newest_first(registry):
    for version in ("1", "3"):
        registry.client.transition_model_version_stage("churn", version, "Production")
    assert [str(mv.version) for mv in registry.versions_in_stage("churn", "Production")] == [
        "3",
        "1",
    ]
    assert str(registry.newest_in_stage("churn", "Production").version) == "3"
    assert registry.newest_in_stage("churn", "Staging") is None


def test_aliases_resolve_to_a_version_or_none(registry):
    registry.client.set_registered_model_alias("churn", "champion", "2")
    model = registry.registered_model("churn")
    assert alias_version(model, "champion") == "2"
    assert alias_version(model, "challenger") is None
    assert alias_version(None, "champion") is None


def test_tags_are_clipped_and_deleting_a_missing_tag_is_fine(registry):
    registry.set_version_tags("churn", "1", {"long": "x" * 6000, "n": 3})
    tags = registry.model_version("churn", "1").tags
    assert len(tags["long"]) == tag_keys.MAX_VALUE and tags["long"].endswith("...")
    assert tags["n"] == "3"
    registry.delete_version_tag("churn", "1", "n")
    registry.delete_version_tag("churn", "1", "never-written")
    assert "n" not in registry.model_version("churn", "1").tags


def test_best_effort_tags_warn_instead_of_raising(registry, caplog):
    with pytest.raises(MlflowException):
        registry.set_version_tags("churn", "9", {"k": "v"})
    with caplog.at_level(logging.WARNING):
        assert registry.set_version_tags("churn", "9", {"k": "v"}, best_effort=True) is False
    assert "Could not tag churn v9" in caplog.text


def test_a_failed_source_carries_the_reason_and_the_parity_figures(registry):
    report = SimpleNamespace(passed=False, rows=20, outputs=[], small_sample=True)
    registry.tag_source_failed("churn", "1", ParityError("parity failed on value", report))
    registry.tag_source_failed("churn", "2", "deployment 'x' failed")
    registry.tag_source_failed("churn", "9", "no such version: only a warning")

    one, two = registry.model_version("churn", "1").tags, registry.model_version("churn", "2").tags
    assert (one[tag_keys.STATUS], one[tag_keys.ERROR]) == (
        tag_keys.STATUS_FAILED,
        "parity failed on value",
    )
    assert one[tag_keys.PARITY_PREFIX + "passed"] == "false"
    assert one[tag_keys.PARITY_SMALL_SAMPLE] == "true"
    assert (two[tag_keys.STATUS], two[tag_keys.ERROR]) == (
        tag_keys.STATUS_FAILED,
        "deployment 'x' failed",
    )
    assert not any(k.startswith(tag_keys.PARITY_PREFIX) for k in two)


def test_error_message_prefers_an_mlflow_message():
    assert error_message(MlflowException("readable")) == "readable"
    assert error_message(ValueError("plain")) == "plain"
    assert error_message("already text") == "already text"
