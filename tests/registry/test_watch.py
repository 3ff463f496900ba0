"""``mlflow-deploy watch``: the poller on a FILE store (no webhooks there), real conversions.

Alias moves, moves back, deletion, legacy stages, failures, and no double work after a restart
(the state is the registry's, nothing local).
"""

from __future__ import annotations

import os
import sys
import threading

import mlflow
import pytest
from click.testing import CliRunner
from conftest_automation import (
    alias_version,
    audit_runs,
    process_log,
    start_process,
    stop_process,
    wait_for,
)
from helpers import ClipTransformer, numeric_pipeline, onnx_versions, register_sklearn, version_tags
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline as sklearn_pipeline

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry.automation_config import parse_config
from mlflow_deploy_plugins.registry.cli import watch_command
from mlflow_deploy_plugins.registry.watch import watch

NAME, TWIN = "churn", "churn-onnx"
WATCH_CMD = "from mlflow_deploy_plugins.registry.cli import watch_command; watch_command()"


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    """A file-based tracking + registry store (MLflow 3.17 wants an explicit opt-in for it)."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it


def register(numeric_xy, broken: bool = False) -> str:
    x, _, y = numeric_xy
    estimator = LogisticRegression(max_iter=200)
    model = (
        sklearn_pipeline(ClipTransformer(), estimator) if broken else numeric_pipeline(estimator)
    )
    return register_sklearn(model.fit(x, y), NAME, x.head(20))


def watch_once(*args: str):
    return CliRunner().invoke(watch_command, ["--model", NAME, *args, "--once"])


def results() -> list[str]:
    return [r.data.tags[tag_keys.AUDIT_RESULT] for r in audit_runs()]


def test_watch_once_promotes_and_a_restart_does_no_work_twice(file_store, numeric_xy):
    assert MlflowClient().tracking_uri.startswith("file:")
    MlflowClient().set_registered_model_alias(NAME, "champion", register(numeric_xy))

    first = watch_once("--alias", "champion")

    assert first.exit_code == 0, first.output
    assert "churn@champion: converted (ONNX v1)" in first.output
    assert alias_version(TWIN, "champion") == "1"
    (run,) = audit_runs()
    assert run.data.tags[tag_keys.AUDIT_EVENT] == "poll"

    again = watch_once("--alias", "champion")  # a new process: nothing remembered but the registry
    assert again.exit_code == 0 and "Everything is up to date." in again.output
    assert onnx_versions(TWIN) == ["1"] and len(audit_runs()) == 1


def test_watch_loop_follows_moves_back_and_deletion(file_store, numeric_xy):
    client = MlflowClient()
    register(numeric_xy)
    register(numeric_xy)
    stop = threading.Event()
    config = parse_config({"models": [NAME]})
    thread = threading.Thread(target=watch, args=(config,), kwargs={"interval": 0.2, "stop": stop})
    thread.start()
    try:
        for version, twin in [("1", "1"), ("2", "2"), ("1", "1")]:
            client.set_registered_model_alias(NAME, "champion", version)
            wait_for(lambda t=twin: alias_version(TWIN, "champion") == t, 90, what=f"twin v{twin}")
        client.delete_registered_model_alias(NAME, "champion")
        wait_for(lambda: alias_version(TWIN, "champion") is None, 30, what="alias removal")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert onnx_versions(TWIN) == ["1", "2"]  # moving back re-used the first conversion
    assert results() == ["converted", "converted", "reused", "removed"]
    assert {r.data.tags[tag_keys.AUDIT_EVENT] for r in audit_runs()} == {"poll"}


def test_watch_follows_legacy_stage_transitions(file_store, numeric_xy):
    client = MlflowClient()
    register(numeric_xy)
    register(numeric_xy)
    client.transition_model_version_stage(NAME, "1", "Production")

    first = watch_once("--stage", "Production")

    assert first.exit_code == 0, first.output
    assert "churn[Production]: converted (ONNX v1)" in first.output
    assert client.get_model_version(TWIN, "1").current_stage == "Production"
    client.transition_model_version_stage(NAME, "2", "Production", archive_existing_versions=True)
    assert watch_once("--stage", "Production").exit_code == 0
    assert client.get_model_version(TWIN, "2").current_stage == "Production"
    assert client.get_model_version(TWIN, "1").current_stage == "Archived"
    assert audit_runs()[-1].data.tags[tag_keys.AUDIT_STAGE] == "Production"


def test_a_failed_version_is_reported_then_left_alone(file_store, numeric_xy):
    MlflowClient().set_registered_model_alias(NAME, "champion", register(numeric_xy, broken=True))

    first = watch_once()

    assert first.exit_code == 1
    assert "churn@champion: failed" in first.output and "ClipTransformer" in first.output
    assert version_tags(NAME, 1)[tag_keys.STATUS] == tag_keys.STATUS_FAILED
    assert alias_version(TWIN, "champion") is None
    again = watch_once()  # after a restart: not converted again
    assert again.exit_code == 0 and "churn@champion: skipped" in again.output
    assert results() == ["failed"]


def test_watch_refuses_a_bad_config_naming_the_key(file_store, tmp_path):
    (tmp_path / "bad.yaml").write_text("models:\n  - name: churn\n    stages: [Prod]\n")
    result = CliRunner().invoke(watch_command, ["--config", "bad.yaml", "--once"])
    assert result.exit_code == 1
    assert "bad.yaml: models[0].stages[0]: stage must be one of" in result.output


@pytest.mark.slow
def test_watch_as_a_process_until_sigterm(file_store, tmp_path, numeric_xy):
    """The poller as a user runs it (a process, a file store), stopped by SIGTERM."""
    register(numeric_xy)
    env = {**os.environ, "MLFLOW_TRACKING_URI": file_store, "MLFLOW_ALLOW_FILE_STORE": "true"}
    cmd = [sys.executable, "-c", WATCH_CMD, "--model", "churn*", "--interval", "0.5"]
    proc = start_process(cmd, env, tmp_path / "watch.log")
    try:
        MlflowClient().set_registered_model_alias(NAME, "champion", "1")
        wait_for(lambda: alias_version(TWIN, "champion") == "1", 90, what="the poller")
    finally:
        code = stop_process(proc)
    log = process_log(proc)
    assert code == 0, log
    assert "churn@champion: converted source v1 ONNX v1" in log


# ------------------------------------------------------------------ issue 12: who set the twin
def test_watch_never_removes_an_alias_promote_set(file_store, numeric_xy):
    """promote(alias_source=False) sets the twin's alias only; a reconcile pass keeps it."""
    from mlflow_deploy_plugins import promote

    x, _, _ = numeric_xy
    version = register(numeric_xy)
    promote(NAME, version, "champion", sample=x, alias_source=False)
    assert alias_version(NAME, "champion") is None and alias_version(TWIN, "champion") == "1"

    result = watch_once("--alias", "champion")

    assert result.exit_code == 0, result.output
    assert alias_version(TWIN, "champion") == "1"
    assert "removed" not in results()


def test_watch_never_touches_a_twin_alias_without_a_record(file_store, numeric_xy):
    """A twin from before the ownership tags (or an alias set in the UI) is a person's."""
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", register(numeric_xy))
    assert watch_once("--alias", "champion").exit_code == 0
    for key in list(client.get_registered_model(TWIN).tags):
        if key.startswith("mlflow_deploy.alias."):
            client.delete_registered_model_tag(TWIN, key)
    client.delete_registered_model_alias(NAME, "champion")

    result = watch_once("--alias", "champion")

    assert result.exit_code == 0, result.output
    assert alias_version(TWIN, "champion") == "1"
    assert results() == ["converted"]


def test_watch_removes_what_it_set_and_records_the_path(file_store, numeric_xy):
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", register(numeric_xy))
    assert watch_once("--alias", "champion").exit_code == 0
    tags = client.get_registered_model(TWIN).tags
    assert tags["mlflow_deploy.alias.champion.set_by"] == "watch"
    assert tags["mlflow_deploy.alias.champion.source_version"] == "1"
    assert version_tags(TWIN, 1)[tag_keys.PROMOTED_BY] == "watch"
    client.delete_registered_model_alias(NAME, "champion")

    assert watch_once("--alias", "champion").exit_code == 0

    assert alias_version(TWIN, "champion") is None
    assert results() == ["converted", "removed"]
    assert "mlflow_deploy.alias.champion.set_by" not in client.get_registered_model(TWIN).tags
