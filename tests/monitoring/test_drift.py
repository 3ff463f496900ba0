"""drift_report end to end: real store, real payload logs from the serving runtime, real Evidently."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.monitoring import drift_report

pytestmark = pytest.mark.slow


def _artifact(run_id: str, name: str) -> str:
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name)


def test_same_distribution_gives_no_drift(store, payload_logs, kit):
    result = drift_report(f"models:/{kit.ONNX}@champion", str(payload_logs.same.dir))
    assert result.status == "no_drift" and not result.drift_detected
    assert result.drifted_columns == []
    compared = [c.column for c in result.columns]
    assert compared == kit.INPUTS + kit.PREDICTIONS  # every input and every prediction
    assert {c.column: c.role for c in result.columns}["proba_True"] == "prediction"
    assert result.current_rows == result.current_rows_seen == len(payload_logs.same.frame)
    methods = {c.column: c.method for c in result.columns}
    assert {methods[c] for c in kit.NUMERIC + ["proba_True"]} == {"wasserstein"}
    assert {methods[c] for c in kit.CATEGORICAL + ["prediction"]} == {"jensenshannon"}


def test_shifted_columns_drift_exactly(store, payload_logs, kit):
    result = drift_report(f"models:/{kit.ONNX}/1", str(payload_logs.shifted.dir))
    assert sorted(result.drifted_columns) == sorted(kit.SHIFTED)
    assert result.status == "drift" and result.share == 0.5  # 5 of 10 >= drift share 0.5
    by_column = {c.column: c for c in result.columns}
    assert by_column["income"].kind == "num" and by_column["plan"].kind == "cat"
    for column in kit.SHIFTED:
        assert by_column[column].score > by_column[column].threshold == 0.1


def test_drift_share_is_configurable_and_decides_the_status(store, payload_logs, kit):
    result = drift_report(f"models:/{kit.ONNX}/1", str(payload_logs.shifted.dir), drift_share=0.6)
    assert sorted(result.drifted_columns) == sorted(kit.SHIFTED)  # same columns...
    assert result.status == "no_drift"  # ...but 0.5 < 0.6: the dataset test passes


def test_run_artifacts_metrics_params_and_tags(store, payload_logs, kit):
    result = drift_report(
        f"models:/{kit.ONNX}@champion",
        str(payload_logs.shifted.dir),
        experiment_name="drift-checks",
        per_column_method={"age": "ks"},
    )
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "drift-checks"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert artifacts == {"drift_report.html", "drift_snapshot.json", "drift_summary.json"}

    with open(_artifact(result.run_id, "drift_snapshot.json")) as f:
        snapshot = json.load(f)  # Evidently's Snapshot.json(): every metric and test
    assert len(snapshot["metrics"]) == len(snapshot["tests"]) == len(result.columns) + 1
    failed = {
        t["metric_config"]["params"].get("column")
        for t in snapshot["tests"]
        if t["status"] == "FAIL"
    }
    assert failed == {*kit.SHIFTED, None}  # None: the dataset-level test
    with open(_artifact(result.run_id, "drift_summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "drift" and summary["drifted_columns"] == result.drifted_columns

    metrics = run.data.metrics
    assert metrics["drift.share"] == 0.5 and metrics["drift.count"] == 5
    assert metrics["drift.columns"] == 10 and metrics["drift.detected"] == 1.0
    assert "drift_score.age.ks" in metrics  # the method is in the name
    for column in ["income", "tenure", "visits", "proba_True"]:
        assert f"drift_score.{column}.wasserstein" in metrics
    for column in ["plan", "channel", "city", "prediction"]:
        assert f"drift_score.{column}.jensenshannon" in metrics
    assert metrics["drifted.plan"] == 1.0 and metrics["drifted.city"] == 0.0

    params = run.data.params
    assert params["reference.rows"] == "2000" and params["current.rows"] == "1500"
    assert params["current.rows_seen"] == "1500" and params["current.format"] == "payload-log"
    assert params["num_method"] == "wasserstein" and params["cat_method"] == "jensenshannon"
    assert params["threshold"] == "0.1" and params["drift_share"] == "0.5"
    assert params["per_column_method"] == "age=ks"
    assert params["window.since"] == params["window.until"] == "none"
    assert int(params["current.files_read"]) > 1  # the log rotated

    tags = run.data.tags
    assert tags[tag_keys.MODEL_NAME] == kit.ONNX and tags[tag_keys.MODEL_VERSION] == "1"
    assert (tags[tag_keys.SOURCE_MODEL], tags[tag_keys.SOURCE_VERSION]) == (kit.MODEL, "1")
    assert tags[tag_keys.DRIFT_STATUS] == "drift"

    # the ONNX version the URI resolves to, and its source version
    assert result.tagged_versions == [(kit.ONNX, "1"), (kit.MODEL, "1")]
    for name in (kit.ONNX, kit.MODEL):
        version_tags = client.get_model_version(name, "1").tags
        assert version_tags[tag_keys.DRIFT_STATUS] == "drift"
        assert version_tags[tag_keys.DRIFT_SHARE] == "0.5000"
        assert version_tags[tag_keys.DRIFT_RUN_ID] == result.run_id
        assert sorted(version_tags[tag_keys.DRIFT_COLUMNS].split(",")) == sorted(kit.SHIFTED)
        assert (
            tag_keys.DRIFT_CHECKED_AT in version_tags and tag_keys.DRIFT_ERROR not in version_tags
        )


def test_source_uri_uses_the_twin_reference_and_tags_the_source_only(store, payload_logs, kit):
    client = MlflowClient()
    before = client.get_model_version(kit.ONNX, "1").tags.get(tag_keys.DRIFT_RUN_ID)
    result = drift_report(f"models:/{kit.MODEL}/1", str(payload_logs.same.dir))
    assert result.status == "no_drift"
    assert result.tagged_versions == [(kit.MODEL, "1")]
    assert client.get_model_version(kit.MODEL, "1").tags[tag_keys.DRIFT_RUN_ID] == result.run_id
    assert client.get_model_version(kit.ONNX, "1").tags.get(tag_keys.DRIFT_RUN_ID) == before
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == f"{kit.MODEL}-monitoring"
    assert run.data.params["reference.source"].startswith(f"models:/{kit.ONNX}/1")


def test_files_without_predictions_are_scored_with_the_model(store, kit, tmp_path):
    current = tmp_path / "current.parquet"
    kit.make_frame(1500, seed=2, shifted=True).to_parquet(current)
    result = drift_report(f"models:/{kit.ONNX}/1", str(current))
    assert sorted(result.drifted_columns) == sorted(kit.SHIFTED)
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["current.predictions"] == "computed" and params["current.format"] == "parquet"

    # a training set as reference (CSV, no predictions) and JSON Lines rows as current data
    reference, rows = tmp_path / "train.csv", tmp_path / "current.jsonl"
    kit.make_frame(2000, seed=0).to_csv(reference, index=False)
    kit.make_frame(1000, seed=4).to_json(rows, orient="records", lines=True)
    result = drift_report(f"models:/{kit.ONNX}/1", str(rows), reference=str(reference))
    assert result.status == "no_drift" and result.drifted_columns == []
    assert [c.column for c in result.columns] == kit.INPUTS + kit.PREDICTIONS
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["reference.predictions"] == "computed" and params["reference.source"] == str(
        reference
    )


def test_time_window_on_the_runtime_log(store, payload_logs, kit):
    until = datetime.now(timezone.utc)
    result = drift_report(f"models:/{kit.ONNX}/1", str(payload_logs.same.dir), window="7d")
    assert result.current_rows_seen == len(payload_logs.same.frame)
    assert result.until is not None and result.until >= until
    assert result.since == result.until - timedelta(days=7)
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["window.since"] == result.since.isoformat()
    assert params["current.files_skipped"] == "0"


def test_a_model_path_works_without_registry_tags(store, kit, tmp_path):
    path = mlflow.artifacts.download_artifacts(f"models:/{kit.ONNX}/1", dst_path=str(tmp_path))
    result = drift_report(path, kit.make_frame(1000, seed=14))
    assert result.status == "no_drift" and result.tagged_versions == []
    assert result.experiment_name == "mlflow-deploy-monitoring" and result.model_name is None
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags[tag_keys.MODEL_URI] == path
    assert (tags[tag_keys.SOURCE_MODEL], tags[tag_keys.SOURCE_VERSION]) == (
        kit.MODEL,
        "1",
    )  # from the flavor
