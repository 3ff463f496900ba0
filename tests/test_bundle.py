"""``build_bundle``: any MLflow model URI -> a serving bundle (model.onnx + bundle.json)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pytest
from helpers import mixed_data, mixed_pipeline, register_sklearn, tracking_store
from mlflow.tracking import MlflowClient
from sklearn.ensemble import GradientBoostingClassifier

from mlflow_deploy_plugins import build_bundle, promote
from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.core.manifest import Manifest
from mlflow_deploy_plugins.errors import InvalidInputError, ModelNotFoundError
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.settings import ServingSettings

COLUMNS = ["age", "income", "tenure", "city"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """churn v1 (sklearn) promoted to churn-onnx v1 @champion, in a store of this module."""
    path = tmp_path_factory.mktemp("bundle-store")
    with tracking_store(path) as uri:
        frame, target = mixed_data(300)
        frame = frame[COLUMNS]
        model = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0),
            numeric=COLUMNS[:3],
            categorical=COLUMNS[3:],
        ).fit(frame, target)
        register_sklearn(model, "churn", frame.head(5))
        promote("churn", "1", "champion", sample=frame)
        yield uri, model, frame


def registry_state() -> list:
    """Everything a registry write would change: models, versions, aliases, tags, timestamps."""
    client = MlflowClient()
    state = []
    for rm in client.search_registered_models():
        state.append((rm.name, rm.last_updated_timestamp, sorted(rm.aliases), sorted(rm.tags)))
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            state.append(
                (mv.name, mv.version, mv.last_updated_timestamp, sorted(mv.aliases), mv.tags)
            )
    return sorted(state, key=repr)


def feed_for(io: IOSpec, frame) -> dict:
    feed = {}
    for binding in io.inputs:
        dtype = object if binding.dtype == "string" else binding.dtype
        feed[binding.name] = frame[list(binding.columns)].to_numpy().astype(dtype)
    return feed


def test_bundle_from_onnx_twin_copies_it(registry, tmp_path):
    _, model, frame = registry
    out = tmp_path / "bundle"

    bundle = build_bundle("models:/churn-onnx@champion", str(out))

    assert sorted(os.listdir(out)) == ["bundle.json", "model.onnx"]
    local = mlflow.artifacts.download_artifacts("models:/churn-onnx/1")
    conf = mlflow.models.Model.load(local).flavors["mlflow_deploy_plugins"]
    original = Path(local, conf["data"]).read_bytes()
    copied = (out / "model.onnx").read_bytes()
    assert copied == original  # copied, not converted again
    raw = json.loads((out / "bundle.json").read_text())
    assert raw["schema_version"] == 1
    assert (raw["name"], raw["version"], raw["model_file"]) == ("churn-onnx", "1", "model.onnx")
    assert raw["sha256"] == hashlib.sha256(copied).hexdigest()
    assert raw["io"] == conf["io"]
    assert IOSpec.from_dict(raw["io"]).columns == COLUMNS
    source_run = MlflowClient().get_model_version("churn", "1").run_id
    assert raw["source"]["model_name"] == "churn" and raw["source"]["model_version"] == "1"
    assert raw["source"]["flavor"] == "sklearn" and raw["source"]["run_id"] == source_run
    assert raw["onnx_model"] == {
        "name": "churn-onnx",
        "version": "1",
        "model_uri": "models:/churn-onnx@champion",
        "run_id": MlflowClient().get_model_version("churn-onnx", "1").run_id,
    }
    assert raw["parity"]["passed"] is True
    assert raw["settings"] == {}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["created_at"])
    assert raw["onnxruntime_version"] == onnxruntime.__version__
    assert bundle.path == str(out) and bundle.manifest == Manifest.read(str(out))
    assert bundle.model_path == str(out / "model.onnx")

    served = ServedModel(str(out))
    label, proba = served.run(feed_for(served.io, frame.head(50)))
    pyfunc = mlflow.pyfunc.load_model("models:/churn-onnx@champion")
    np.testing.assert_array_equal(label.astype(bool), pyfunc.predict(frame.head(50)))
    np.testing.assert_array_equal(
        proba, pyfunc.predict(frame.head(50), params={"predict_method": "predict_proba"})
    )
    np.testing.assert_array_equal(label.astype(bool), model.predict(frame.head(50)))

    by_version = build_bundle("models:/churn-onnx/1", str(tmp_path / "by-version"))
    assert by_version.manifest.sha256 == raw["sha256"]
    assert by_version.manifest.onnx_model["model_uri"] == "models:/churn-onnx/1"


def test_bundle_name_and_settings(registry, tmp_path):
    bundle = build_bundle(
        "models:/churn-onnx@champion",
        str(tmp_path / "named"),
        name="churn-svc",
        settings={"max_batch_size": 8, "max_body_bytes": 1024},
    )
    assert bundle.manifest.name == "churn-svc" and bundle.manifest.version == "1"
    assert bundle.manifest.settings == {"max_batch_size": 8, "max_body_bytes": 1024}
    settings = ServingSettings.resolve(bundle.manifest.settings, env={})
    assert (settings.max_batch_size, settings.max_body_bytes) == (8, 1024)


def test_bundle_from_non_onnx_uri_converts_without_registry_writes(registry, tmp_path):
    _, model, frame = registry
    before = registry_state()

    bundle = build_bundle("models:/churn/1", str(tmp_path / "converted"), sample=frame)

    assert registry_state() == before, "build_bundle wrote to the registry"
    raw = bundle.manifest.raw
    assert (raw["name"], raw["version"]) == ("churn", "1")
    assert raw["source"]["model_uri"] == "models:/churn/1"
    assert raw["source"]["model_name"] == "churn" and raw["source"]["model_version"] == "1"
    assert raw["source"]["flavor"] == "sklearn" and raw["source"]["run_id"]
    assert raw["onnx_model"] == {}
    assert (
        raw["parity"]["passed"] is True
        and raw["parity"]["rows"] == len(frame) + raw["parity"]["missing_value_rows"]
    )
    model_file = tmp_path / "converted" / "model.onnx"
    assert raw["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    served = ServedModel(bundle.path)
    label, proba = served.run(feed_for(served.io, frame))
    np.testing.assert_array_equal(label.astype(bool), model.predict(frame))
    np.testing.assert_allclose(proba, model.predict_proba(frame), atol=1e-5)

    run_id = raw["source"]["run_id"]
    from_run = build_bundle(f"runs:/{run_id}/model", str(tmp_path / "from-run"), sample=frame)
    assert registry_state() == before
    assert (from_run.manifest.name, from_run.manifest.version) == ("model", "1")
    assert from_run.manifest.source["model_uri"] == f"runs:/{run_id}/model"


def test_refuses_a_non_empty_output_dir(registry, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        build_bundle("models:/churn-onnx@champion", str(out))
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_bundle("models:/churn-onnx@champion", str(empty)).manifest.name == "churn-onnx"


@pytest.mark.parametrize(
    "uri",
    ["models:/nope/1", "models:/churn/99", "models:/churn@nope", "/nonexistent/model-dir"],
)
def test_unknown_model_uri_is_model_not_found(registry, tmp_path, uri):
    out = tmp_path / "out"
    with pytest.raises(ModelNotFoundError, match=re.escape(uri)):
        build_bundle(uri, str(out))
    assert not out.exists()


# ------------------------------------------------------------------ integrity (issue 12)
def _artifact_file(store: Path, uri: str) -> tuple[Path, str]:
    """The model file of ``uri`` inside the artifact store itself, and its recorded sha256."""
    local = mlflow.artifacts.download_artifacts(uri)
    conf = mlflow.models.Model.load(local).flavors["mlflow_deploy_plugins"]
    recorded = conf["sha256"]
    for path in store.rglob(conf["data"]):
        if hashlib.sha256(path.read_bytes()).hexdigest() == recorded:
            return path, recorded
    raise AssertionError(f"no stored file of {uri} under {store}")


def test_bundle_records_the_registry_version_and_its_runs(registry, tmp_path):
    bundle = build_bundle("models:/churn-onnx@champion", str(tmp_path / "b"))
    client = MlflowClient()
    twin = client.get_model_version("churn-onnx", "1")
    source = client.get_model_version("churn", "1")
    assert bundle.manifest.onnx_model["version"] == "1"
    assert bundle.manifest.onnx_model["run_id"] == twin.run_id
    assert bundle.manifest.source["model_version"] == "1"
    assert bundle.manifest.source["run_id"] == source.run_id


def test_tampered_registry_artifact_is_refused(tmp_path, monkeypatch):
    """Overwriting model.onnx in the artifact store: no bundle, an error naming both hashes."""
    store = tmp_path / "store"
    store.mkdir()
    with tracking_store(store):
        frame, target = mixed_data(200)
        frame = frame[COLUMNS]
        model = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0),
            numeric=COLUMNS[:3],
            categorical=COLUMNS[3:],
        ).fit(frame, target)
        register_sklearn(model, "tamper", frame.head(5))
        promote("tamper", "1", "champion", sample=frame)
        stored, recorded = _artifact_file(store, "models:/tamper-onnx/1")
        assert stored.is_file()
        # a different, valid ONNX model: what an attacker with write access to the store drops
        other = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0),
            numeric=COLUMNS[:3],
            categorical=COLUMNS[3:],
        ).fit(frame, 1 - target)
        register_sklearn(other, "other", frame.head(5))
        promote("other", "1", "champion", sample=frame)
        other_file, _ = _artifact_file(store, "models:/other-onnx/1")
        stored.write_bytes(other_file.read_bytes())
        tampered = hashlib.sha256(stored.read_bytes()).hexdigest()
        assert tampered != recorded
        out = tmp_path / "bundle"

        with pytest.raises(InvalidInputError) as info:
            build_bundle("models:/tamper-onnx@champion", str(out))

        message = info.value.message
        assert recorded in message and tampered in message
        assert "models:/tamper-onnx@champion" in message
        assert not (out / "model.onnx").exists() and not (out / "bundle.json").exists()
