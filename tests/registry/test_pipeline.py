"""The promotion pipeline and its config, on a real local registry (SQLite).

Real conversions where the conversion matters (happy path, move back, failure, duplicates);
``FakePromote`` (writes the same registry state, converts nothing) where only scheduling,
ordering and deployment are under test.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest_automation import (
    MEMORY_TARGET,
    FakePromote,
    alias_version,
    audit_runs,
    fake_source_versions,
    installed_memory_target,
)
from helpers import ClipTransformer, numeric_pipeline, onnx_versions, register_sklearn, version_tags
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline as sklearn_pipeline

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.registry import promote as promote_module
from mlflow_deploy_plugins.registry.audit import promotion_history
from mlflow_deploy_plugins.registry.automation_config import load_config, parse_config
from mlflow_deploy_plugins.registry.decision import Slot
from mlflow_deploy_plugins.registry.pipeline import Pipeline
from mlflow_deploy_plugins.registry.triggers import Trigger
from mlflow_deploy_plugins.registry.watch import Reconciler

NAME, TWIN = "churn", "churn-onnx"
CHAMPION = Slot(NAME, "alias", "champion")


@pytest.fixture
def new_pipeline(tracking_uri):
    made = []

    def make(config=None, **kwargs):
        pipeline = Pipeline(parse_config(config or {"models": ["churn*", "fraud"]}), **kwargs)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.drain(60)
        pipeline.close()


@pytest.fixture
def memory_target():
    with installed_memory_target() as state:
        yield state


@pytest.fixture
def fake_promote(monkeypatch):
    fake = FakePromote()
    monkeypatch.setattr(promote_module, "promote", fake)
    return fake


def register(numeric_xy, broken: bool = False) -> str:
    x, _, y = numeric_xy
    model = (
        sklearn_pipeline(ClipTransformer(), LogisticRegression(max_iter=200))
        if broken
        else numeric_pipeline(LogisticRegression(max_iter=200))
    )
    return register_sklearn(model.fit(x, y), NAME, x.head(20))


def set_alias(version, name=NAME, alias="champion"):
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def run(pipeline, slot=CHAMPION, version=None, event="model_version_alias.created", **kwargs):
    trigger = Trigger(slot, event, None if version is None else str(version), **kwargs)
    return pipeline.submit(trigger).result(timeout=180)


# --------------------------------------------------------------------------- real conversions
def test_alias_promotion_converts_gates_registers_and_audits(new_pipeline, numeric_xy):
    pipeline = new_pipeline()
    set_alias(register(numeric_xy))

    outcome = run(pipeline, version=1, explicit=True, delivery_ids=("d-1",))

    assert (outcome.result, outcome.source_version, outcome.onnx_version) == ("converted", "1", "1")
    assert alias_version(TWIN, "champion") == "1"
    assert version_tags(NAME, 1)[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED
    (run_,) = audit_runs()
    tags, metrics = run_.data.tags, run_.data.metrics
    assert tags[tag_keys.AUDIT_EVENT] == "model_version_alias.created"
    assert tags[tag_keys.AUDIT_DELIVERY_IDS] == "d-1"
    assert (tags[tag_keys.AUDIT_RESULT], tags[tag_keys.AUDIT_ALIAS]) == ("converted", "champion")
    assert (tags[tag_keys.SOURCE_MODEL], tags[tag_keys.SOURCE_VERSION]) == (NAME, "1")
    assert (tags[tag_keys.ONNX_MODEL], tags[tag_keys.ONNX_VERSION]) == (TWIN, "1")
    assert (
        metrics["parity.passed"] == 1.0 and metrics["parity.rows"] == 1000
    )  # synthesized from the 20-row example
    assert (
        metrics["timing.promote_s"] > 0 and metrics["timing.total_s"] >= metrics["timing.promote_s"]
    )
    assert run_.info.status == "FINISHED" and run_.info.end_time >= run_.info.start_time
    (row,) = promotion_history(NAME, alias="champion")
    assert (row["result"], row["onnx_version"], row["run_id"]) == (
        "converted",
        "1",
        run_.info.run_id,
    )


def test_alias_moved_back_follows_instantly_without_converting(new_pipeline, numeric_xy):
    pipeline = new_pipeline()
    register(numeric_xy)
    register(numeric_xy)
    set_alias(1)
    first = run(pipeline, version=1, explicit=True)
    set_alias(2)
    assert run(pipeline, version=2, explicit=True).result == "converted"

    set_alias(1)
    back = run(pipeline, version=1, explicit=True)

    assert (back.result, back.onnx_version) == ("reused", first.onnx_version)
    assert alias_version(TWIN, "champion") == first.onnx_version
    assert onnx_versions(TWIN) == ["1", "2"]  # nothing converted again
    runs = audit_runs()
    assert [r.data.tags[tag_keys.AUDIT_RESULT] for r in runs] == [
        "converted",
        "converted",
        "reused",
    ]
    # "instantly" is what the reused result and the unchanged version list above prove; the
    # audit's timing metrics are measured in benchmarks, not asserted here (a loaded machine
    # made a 2x ratio flaky)
    assert "timing.total_s" in runs[2].data.metrics


@pytest.mark.parametrize("remove", [True, False])
def test_deleted_source_alias_removes_the_twin_alias_when_configured(
    new_pipeline, numeric_xy, remove
):
    pipeline = new_pipeline({"models": ["churn"], "remove_alias_on_delete": remove})
    set_alias(register(numeric_xy))
    run(pipeline, version=1, explicit=True)

    MlflowClient().delete_registered_model_alias(NAME, "champion")
    outcome = run(pipeline, event="model_version_alias.deleted")

    if remove:
        assert outcome.result == "removed" and alias_version(TWIN, "champion") is None
        assert audit_runs()[-1].data.tags[tag_keys.AUDIT_RESULT] == "removed"
    else:
        assert outcome.result == "skipped" and alias_version(TWIN, "champion") == "1"
        assert len(audit_runs()) == 1
    assert onnx_versions(TWIN) == ["1"]  # the verified version itself stays


def test_failed_conversion_tags_the_source_moves_nothing_and_is_not_retried(
    new_pipeline, numeric_xy
):
    pipeline = new_pipeline()
    set_alias(register(numeric_xy, broken=True))

    failed = run(pipeline, version=1, explicit=True)

    assert failed.result == "failed" and "ClipTransformer" in failed.reason
    source = version_tags(NAME, 1)
    assert (
        source[tag_keys.STATUS] == tag_keys.STATUS_FAILED
        and "ClipTransformer" in source[tag_keys.ERROR]
    )
    assert alias_version(TWIN, "champion") is None and onnx_versions(TWIN) == []
    (audit,) = audit_runs()
    assert audit.info.status == "FAILED" and audit.data.tags[tag_keys.AUDIT_RESULT] == "failed"
    assert "ClipTransformer" in audit.data.tags[tag_keys.ERROR]

    # a reconcile pass (after a restart, say) does not convert the failed version again
    outcomes = [f.result(60) for f in Reconciler(pipeline, "reconcile").run_once()]
    assert [o.result for o in outcomes] == ["skipped"] and len(audit_runs()) == 1

    # the pipeline is still healthy: the next promotion goes through
    set_alias(register(numeric_xy))
    assert run(pipeline, version=2, explicit=True).result == "converted"
    assert alias_version(TWIN, "champion") == "1"


def test_two_events_for_the_same_version_at_once_convert_once(
    new_pipeline, numeric_xy, monkeypatch
):
    real_promote, started, release = promote_module.promote, threading.Event(), threading.Event()

    def slow_start(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real_promote(*args, **kwargs)

    monkeypatch.setattr(promote_module, "promote", slow_start)
    pipeline = new_pipeline()
    set_alias(register(numeric_xy))
    first = pipeline.submit(Trigger(CHAMPION, "model_version_alias.created", "1", True, ("a",)))
    assert started.wait(30)
    # two more deliveries of the same promotion while the first one converts
    second = pipeline.submit(Trigger(CHAMPION, "model_version_alias.created", "1", True, ("b",)))
    third = pipeline.submit(Trigger(CHAMPION, "reconcile", "1"))
    release.set()

    assert first.result(120).result == "converted"
    assert second is third  # pending triggers for one slot are merged
    assert second.result(120).result == "covered"
    assert onnx_versions(TWIN) == ["1"]
    assert [r.data.tags[tag_keys.AUDIT_RESULT] for r in audit_runs()] == ["converted"]


# --------------------------------------------------------------------------- scheduling
def test_models_run_in_parallel_but_one_model_in_order(new_pipeline, fake_promote):
    fake_source_versions(NAME, 2)
    fake_source_versions("fraud", 1)
    set_alias(1)
    set_alias(1, name="fraud")
    pipeline = new_pipeline()
    # parallel: both promotions must be inside promote() at the same time to pass the barrier
    fake_promote.barrier = threading.Barrier(2, timeout=20)
    a = pipeline.submit(Trigger(CHAMPION, "model_version_alias.created", "1", True))
    b = pipeline.submit(Trigger(Slot("fraud", "alias", "champion"), "reconcile", "1"))
    assert (a.result(60).result, b.result(60).result) == ("converted", "converted")

    # order: the second move waits for the first, and the last move wins
    fake_promote.barrier, fake_promote.gate = None, threading.Event()
    fake_promote.calls.clear()
    fake_promote.started.clear()
    set_alias(2)
    moved = pipeline.submit(Trigger(CHAMPION, "model_version_alias.created", "2", True))
    assert fake_promote.started.wait(30)
    set_alias(1)
    back = pipeline.submit(Trigger(CHAMPION, "model_version_alias.created", "1", True))
    time.sleep(0.3)
    assert fake_promote.calls == [(NAME, "2")]  # nothing else runs for this model meanwhile
    fake_promote.gate.set()
    assert (moved.result(60).result, back.result(60).result) == ("converted", "reused")
    assert fake_promote.calls == [(NAME, "2"), (NAME, "1")]
    assert alias_version(TWIN, "champion") == "1"


def test_a_late_event_does_not_move_the_twin_back(new_pipeline, fake_promote):
    fake_source_versions(NAME, 2)
    pipeline = new_pipeline()
    set_alias(1)
    run(pipeline, version=1, explicit=True)
    set_alias(2)
    run(pipeline, version=2, explicit=True)

    late = run(pipeline, version=1, explicit=True)  # the v1 delivery arrives last

    assert late.result == "up_to_date" and late.source_version == "2"
    assert alias_version(TWIN, "champion") == "2"
    assert fake_promote.calls == [(NAME, "1"), (NAME, "2")]


def test_unconfigured_models_aliases_and_twins_are_ignored(new_pipeline, fake_promote):
    fake_source_versions("other", 1)
    fake_source_versions(NAME, 1)
    set_alias(1, name="other")
    set_alias(1, alias="challenger")
    pipeline = new_pipeline()
    outcomes = [
        run(pipeline, Slot("other", "alias", "champion"), 1),
        run(pipeline, Slot(NAME, "alias", "challenger"), 1),
        run(pipeline, Slot(TWIN, "alias", "champion"), 1),
    ]
    assert [o.result for o in outcomes] == ["ignored"] * 3
    assert fake_promote.calls == [] and audit_runs() == []


# --------------------------------------------------------------------------- deployment
def deploy_config(**deploy):
    return {
        "models": [
            {
                "name": NAME,
                "deploy": {
                    "target": MEMORY_TARGET,
                    "name": "{model}-{alias}",
                    "config": {"replicas": 2, "public": False},
                    **deploy,
                },
            }
        ]
    }


def test_deploys_then_updates_and_records_what_serves(new_pipeline, fake_promote, memory_target):
    fake_source_versions(NAME, 2)
    pipeline = new_pipeline(deploy_config())
    set_alias(1)
    created = run(pipeline, version=1, explicit=True)
    set_alias(2)
    updated = run(pipeline, version=2, explicit=True)

    assert created.deployments == updated.deployments == (f"{MEMORY_TARGET}:churn-champion",)
    assert memory_target.calls == [
        ("create", "churn-champion", f"models:/{TWIN}/1"),
        ("update", "churn-champion", f"models:/{TWIN}/2"),
    ]
    assert memory_target.deployments["churn-champion"]["config"] == {
        "replicas": "2",
        "public": "false",
    }
    twin = MlflowClient().get_registered_model(TWIN)
    assert twin.tags[tag_keys.deployment_tag(MEMORY_TARGET, "churn-champion")] == "2"
    assert version_tags(TWIN, 2)[tag_keys.DEPLOY_STATUS] == tag_keys.STATUS_DEPLOYED
    tags = audit_runs()[-1].data.tags
    assert (tags[tag_keys.AUDIT_TARGET], tags[tag_keys.AUDIT_DEPLOYMENT]) == (
        MEMORY_TARGET,
        "churn-champion",
    )
    assert tags[tag_keys.AUDIT_DEPLOYED_URI] == f"models:/{TWIN}/2"
    # in sync now: a reconcile pass finds nothing to do
    assert Reconciler(pipeline).scan() == []


def test_failed_deployment_puts_the_twin_alias_back(new_pipeline, fake_promote, memory_target):
    fake_source_versions(NAME, 2)
    pipeline = new_pipeline(deploy_config())
    set_alias(1)
    run(pipeline, version=1, explicit=True)
    memory_target.fail_uris.add(f"models:/{TWIN}/2")
    set_alias(2)

    failed = run(pipeline, version=2, explicit=True)

    assert failed.result == "failed" and "readiness probe failed" in failed.reason
    assert alias_version(TWIN, "champion") == "1"  # the ONNX alias did not move
    assert memory_target.deployments["churn-champion"]["model_uri"] == f"models:/{TWIN}/1"
    source = version_tags(NAME, 2)
    assert (
        source[tag_keys.STATUS] == tag_keys.STATUS_FAILED
        and "churn-champion" in source[tag_keys.ERROR]
    )
    assert version_tags(TWIN, 2)[tag_keys.DEPLOY_STATUS] == tag_keys.STATUS_FAILED
    calls = len(memory_target.calls)
    assert [f.result(30).result for f in Reconciler(pipeline).run_once()] == ["skipped"]
    assert len(memory_target.calls) == calls  # not retried on every pass

    memory_target.fail_uris.clear()  # fixed: setting the alias again retries
    retried = run(pipeline, version=2, explicit=True)
    assert (retried.result, alias_version(TWIN, "champion")) == ("reused", "2")
    assert version_tags(NAME, 2)[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED
    assert tag_keys.ERROR not in version_tags(NAME, 2)


# --------------------------------------------------------------------------- config
EXAMPLE_YAML = """
aliases: [champion]
remove_alias_on_delete: true
audit_experiment: release-audit
models:
  - churn
  - name: "fraud-*"
    aliases: [champion, challenger]
    stages: [Production]
    promote: {atol: 1.0e-4, quantize: false}
    deploy:
      - target: onnx-docker
        name: "{model}-prod"
        aliases: [champion]
        config: {port: 5001, workers: 2}
"""

EXAMPLE_TOML = """
aliases = ["champion"]
remove_alias_on_delete = true
audit_experiment = "release-audit"

[[models]]
name = "churn"

[[models]]
name = "fraud-*"
aliases = ["champion", "challenger"]
stages = ["Production"]
promote = { atol = 1.0e-4, quantize = false }
deploy = [{ target = "onnx-docker", name = "{model}-prod", aliases = ["champion"], config = { port = 5001, workers = 2 } }]
"""


def test_yaml_and_toml_configs_mean_the_same(tmp_path):
    (tmp_path / "a.yaml").write_text(EXAMPLE_YAML)
    (tmp_path / "a.toml").write_text(EXAMPLE_TOML)
    config = load_config(tmp_path / "a.yaml")
    assert config == load_config(tmp_path / "a.toml")
    assert config.audit_experiment == "release-audit"
    assert config.rule_for("churn").aliases == ("champion",)
    fraud = config.rule_for("fraud-eu")
    assert (fraud.aliases, fraud.stages) == (("champion", "challenger"), ("Production",))
    assert fraud.promote == {"atol": 1e-4, "quantize": False}
    (spec,) = fraud.deployments_for("alias", "champion")
    assert spec.config == {"port": "5001", "workers": "2"}
    assert spec.deployment_name("fraud-eu", "champion", "fraud-eu-onnx") == "fraud-eu-prod"
    assert fraud.deployments_for("alias", "challenger") == ()
    assert config.rule_for("fraud-eu-onnx") is None and config.is_twin("fraud-eu-onnx")
    assert config.rule_for("other") is None
    overridden = config.with_overrides(models=["x*"], aliases=["prod"], stages=["Staging"])
    assert overridden.rule_for("xy").aliases == ("prod",)
    assert overridden.rule_for("xy").stages == ("Staging",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model": ["churn"]}, "model: unknown key"),
        ({"models": []}, "models: must be a non-empty list"),
        ({"models": [{"aliases": ["x"]}]}, "models[0].name"),
        ({"models": [{"name": "a", "stages": ["Prod"]}]}, "models[0].stages[0]: stage must be"),
        ({"models": [{"name": "a", "aliases": ["latest"]}]}, "models[0].aliases: alias 'latest'"),
        ({"models": [{"name": "a", "aliases": []}]}, "models[0]: needs at least one alias"),
        ({"models": [{"name": "a", "deploy": {"name": "x"}}]}, "models[0].deploy[0].target"),
        (
            {"models": [{"name": "a", "deploy": {"target": "t", "name": "{version}"}}]},
            "models[0].deploy[0].name: unknown placeholder(s) ['version']",
        ),
        ({"models": [{"name": "a", "promote": {"atol": "x"}}]}, "models[0].promote.atol: must be"),
        ({"models": [{"name": "a", "promote": {"quantize": 1}}]}, "promote.quantize: must be bool"),
        ({"models": [{"name": "a", "onnx_name": "fixed"}]}, "models[0].onnx_name: must be"),
        ({"remove_alias_on_delete": "yes"}, "remove_alias_on_delete: must be true or false"),
    ],
)
def test_config_errors_name_the_key(config, message):
    with pytest.raises(InvalidInputError) as err:
        parse_config(config, source="automation.yaml")
    assert err.value.message.startswith("automation.yaml: ")
    assert message in err.value.message
