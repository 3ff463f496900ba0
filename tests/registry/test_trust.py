"""Issue 12: the automation unpickles nothing nobody said to trust.

The serialisation format is read from the MLmodel (never by loading the model); a pickle model
carries a real ``__reduce__`` payload that writes a marker file when anything unpickles it.
"""

from __future__ import annotations

import logging

import pytest
from helpers import log_sklearn, numeric_pipeline, plant_pickle_payload
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlflow_deploy_plugins.core import serialization
from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.registry.automation_config import load_config, parse_config
from mlflow_deploy_plugins.registry.pipeline import Pipeline
from mlflow_deploy_plugins.registry.trust import source_format
from mlflow_deploy_plugins.registry.watch import watch

NAME, TWIN = "risky", "risky-onnx"


@pytest.fixture
def pickle_model(tracking_uri, tmp_path, numeric_xy):
    """``risky`` v1 @champion, logged with serialization_format='pickle', payload planted."""
    x, _, y = numeric_xy
    model = numeric_pipeline(LogisticRegression(max_iter=200)).fit(x, y)
    info = log_sklearn(model, x.head(20), serialization_format="pickle", registered_model_name=NAME)
    marker = tmp_path / "payload-ran"
    plant_pickle_payload(tmp_path, info.model_id, model, marker)
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    return marker


def audit_results(pipeline) -> list[str]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(pipeline.config.audit_experiment)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r.data.tags[tag_keys.AUDIT_RESULT] for r in runs]


def test_pickle_refused_by_default_accepted_with_trust_pickle(pickle_model, caplog):
    config = parse_config({"models": [NAME]})
    with caplog.at_level(logging.WARNING):
        (outcome,) = watch(config, once=True)

    assert outcome.result == "refused"
    assert not pickle_model.exists(), "the payload ran: the model was unpickled"
    assert "pickle serialisation" in outcome.reason and "trust_pickle: true" in outcome.reason
    assert any("trust_pickle" in r.getMessage() for r in caplog.records)
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags[tag_keys.STATUS] == tag_keys.STATUS_REFUSED
    assert "trust_pickle" in tags[tag_keys.ERROR]
    assert "refused" in audit_results(Pipeline(config))
    assert MlflowClient().search_model_versions(f"name='{TWIN}'") == []

    # the same version once the config trusts it: a new process (no restart memory) converts it
    trusted = parse_config({"models": [{"name": NAME, "trust_pickle": True}]})
    (outcome,) = watch(trusted, once=True)

    assert outcome.result == "converted", outcome.reason
    assert pickle_model.exists(), "trust_pickle: the model was loaded (and its payload ran)"
    assert MlflowClient().get_model_version(NAME, "1").tags[tag_keys.STATUS] == "converted"


def test_global_trust_pickle_and_per_model_override(pickle_model):
    trusting = parse_config(
        {"trust_pickle": True, "models": [{"name": NAME, "trust_pickle": False}]}
    )
    (outcome,) = watch(trusting, once=True)
    assert outcome.result == "refused" and "models[0].trust_pickle: true" in outcome.reason
    assert not pickle_model.exists()

    (outcome,) = watch(parse_config({"trust_pickle": True, "models": [NAME]}), once=True)
    assert outcome.result == "converted" and pickle_model.exists()


def test_promote_warns_naming_the_format(pickle_model, caplog, numeric_xy):
    from mlflow_deploy_plugins import promote

    with caplog.at_level(logging.WARNING, logger="mlflow_deploy_plugins"):
        promote(NAME, 1, "champion", sample=numeric_xy[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pickle serialisation" in w and "models:/risky/1" in w for w in warnings)


def test_skops_model_is_converted_without_trust(tracking_uri, numeric_xy):
    x, _, y = numeric_xy
    model = numeric_pipeline(LogisticRegression(max_iter=200)).fit(x, y)
    log_sklearn(model, x.head(20), registered_model_name=NAME)  # skops (the helpers' default)
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    assert source_format(f"models:/{NAME}/1").format == serialization.SKOPS

    (outcome,) = watch(parse_config({"models": [NAME]}), once=True)

    assert outcome.result == "converted"


@pytest.mark.parametrize(
    ("flavor", "conf", "files", "expected"),
    [
        ("sklearn", {"serialization_format": "pickle"}, (), "pickle"),
        ("sklearn", {"serialization_format": "cloudpickle"}, (), "cloudpickle"),
        ("sklearn", {}, (), "pickle"),  # MLflow's loader reads a missing key as pickle
        ("sklearn", {"serialization_format": "skops"}, (), "skops"),
        (
            "sklearn",
            {"serialization_format": "skops", "skops_trusted_types": ["sklearn.x.Y"]},
            (),
            "skops",
        ),
        (
            "sklearn",
            {"serialization_format": "skops", "skops_trusted_types": ["builtins.eval"]},
            (),
            "skops-untrusted",
        ),
        ("sklearn", {"serialization_format": "joblib"}, (), "unknown"),
        ("lightgbm", {}, (), "native"),  # a Booster: LightGBM's text format
        ("lightgbm", {"model_class": "lightgbm.sklearn.LGBMClassifier"}, (), "cloudpickle"),
        (
            "lightgbm",
            {"model_class": "lightgbm.sklearn.LGBMClassifier", "serialization_format": "skops"},
            (),
            "skops",
        ),
        ("xgboost", {"model_format": "ubj"}, (), "native"),
        (
            "pytorch",
            {"model_data": "data"},
            ("data/model.pth", "data/pickle_module_info.txt"),
            "pickle",
        ),
        ("pytorch", {"model_data": "data"}, ("data/model.pt2",), "pt2"),
        ("pytorch", {"model_data": "data"}, (), "unknown"),
        ("tensorflow", {"model_type": "tf2-module", "saved_model_dir": "tf2model"}, (), "native"),
        (
            "tensorflow",
            {"model_type": "keras", "data": "data", "save_format": "tf"},
            ("data/model.keras", "data/save_format.txt"),
            "native",
        ),
        (
            "tensorflow",
            {"model_type": "keras", "data": "data", "save_format": "tf"},
            ("data/model.keras", "data/custom_objects.cloudpickle"),
            "cloudpickle",
        ),
        ("tensorflow", {"model_type": "keras", "data": "data", "save_format": "h5"}, (), "unknown"),
        ("tensorflow", {"model_type": "keras", "data": "data"}, (), "unknown"),  # read as h5
        ("tensorflow", {"model_type": "tf1-estimator"}, (), "unknown"),
        ("python_function", {"python_model": "python_model.pkl"}, (), "cloudpickle"),
        ("onnx", {"data": "model.onnx"}, (), "onnx"),
    ],
)
def test_serialization_format_from_the_mlmodel(flavor, conf, files, expected):
    fmt = serialization.serialization_format(flavor, conf, files)
    assert fmt == expected
    assert serialization.runs_code(fmt) is (
        expected in ("pickle", "cloudpickle", "skops-untrusted", "unknown")
    )


def test_model_scope_is_an_explicit_list(tmp_path):
    with pytest.raises(InvalidInputError, match=r"models: required.*'\*'"):
        parse_config({"aliases": ["champion"]})
    with pytest.raises(InvalidInputError, match="watches no model"):
        load_config(None).check_scope()
    assert load_config(None).with_overrides(["churn"]).check_scope().rule_for("churn")
    every = parse_config({"models": ["*"]})
    assert every.rule_for("anything") is not None and not every.rule_for("anything").trust_pickle
    with pytest.raises(InvalidInputError, match="trust_pickle: must be true or false"):
        parse_config({"models": [{"name": "a", "trust_pickle": "yes"}]})
