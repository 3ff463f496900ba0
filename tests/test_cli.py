"""The ``mlflow-deploy`` command line, in process (CliRunner) and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import mixed_pipeline, register_sklearn, tracking_store
from mlflow.tracking import MlflowClient
from sklearn.tree import DecisionTreeClassifier

from mlflow_deploy_plugins.cli import main


@pytest.fixture
def tracking_uri(tmp_path):
    """conftest's fresh store per test (sets MLFLOW_TRACKING_URI), from a pre-migrated copy."""
    with tracking_store(tmp_path) as uri:
        yield uri


@pytest.fixture
def registered(tracking_uri, tmp_path, mixed_frame, mixed_target):
    """churn v1 registered; its validation sample written to sample.csv."""
    model = mixed_pipeline(DecisionTreeClassifier(max_depth=4, random_state=0))
    model.fit(mixed_frame, mixed_target)
    register_sklearn(model, "churn", mixed_frame.head(5))
    mixed_frame.to_csv(tmp_path / "sample.csv", index=False)
    return model, str(tmp_path / "sample.csv")


def invoke(*args):
    # MLFLOW_TRACKING_URI is in os.environ (the fixture); pass it explicitly all the same
    return CliRunner().invoke(
        main, list(args), env={"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", "")}
    )


def test_help_is_followable():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for text in ("convert", "promote", "MLFLOW_TRACKING_URI", "mlflow-deploy promote churn 3"):
        assert text in result.output
    for command, options in {
        "convert": ["--output", "--sample", "--atol", "--rtol", "--min-label-agreement"],
        "promote": ["--alias", "--stage", "--onnx-name", "--sample", "--json"],
    }.items():
        sub = CliRunner().invoke(main, [command, "--help"])
        assert sub.exit_code == 0
        for option in options:
            assert option in sub.output


def test_convert_writes_a_model_directory(registered, tmp_path):
    model, sample = registered
    out = tmp_path / "churn-onnx"

    result = invoke("convert", "models:/churn/1", "--output", str(out), "--sample", sample)

    assert result.exit_code == 0, result.output
    # 400 sample rows + a copy of each with missing values (the forest accepts NaN)
    assert "parity PASSED on 800 rows, 400 with missing values" in result.output
    assert f"ONNX model: {out}/model.onnx" in result.output
    frame = mlflow.models.Model.load(str(out)).load_input_example(str(out))
    loaded = mlflow.pyfunc.load_model(str(out))
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    assert MlflowClient().search_registered_models() != []  # only the source: nothing registered
    assert [m.name for m in MlflowClient().search_registered_models()] == ["churn"]


def test_promote_with_alias_then_stage(registered):
    _, sample = registered

    first = invoke("promote", "churn", "1", "--alias", "prod", "--sample", sample)
    assert first.exit_code == 0, first.output
    assert "churn v1 -> churn-onnx v1 (converted); alias 'prod'" in first.output
    assert "Model URI: models:/churn-onnx@prod" in first.output
    assert "parity passed: True" in first.output
    assert MlflowClient().get_model_version_by_alias("churn-onnx", "prod").version in (1, "1")

    staged = invoke("promote", "churn", "1", "--stage", "Production")
    assert staged.exit_code == 0, staged.output
    assert "(re-used); stage 'Production'" in staged.output
    assert MlflowClient().get_model_version("churn-onnx", "1").current_stage == "Production"

    as_json = invoke("promote", "churn", "1", "--json")  # default alias: champion
    payload = json.loads(as_json.output.strip().splitlines()[-1])
    assert payload["reused"] is True and payload["model_uri"] == "models:/churn-onnx@champion"


def test_errors_exit_1_with_a_readable_line(registered, tmp_path):
    unknown = invoke("promote", "nobody", "1")
    assert unknown.exit_code == 1
    assert "Error: Registered model 'nobody' does not exist" in unknown.output
    assert "Traceback" not in unknown.output

    bad_version = invoke("promote", "churn", "one")
    assert bad_version.exit_code == 1 and "Error: version must be a model version number" in (
        bad_version.output
    )

    missing = invoke("convert", "models:/churn/9", "--output", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "Error: Model 'models:/churn/9'" in missing.output

    bad_stage = invoke("promote", "churn", "1", "--stage", "Prod")
    assert bad_stage.exit_code == 2 and "Invalid value for '--stage'" in bad_stage.output


def test_installed_console_script(registered, tmp_path):
    """The real entry point, in a subprocess, with MLFLOW_TRACKING_URI from the environment."""
    _, sample = registered
    exe = shutil.which("mlflow-deploy", path=os.path.dirname(sys.executable))
    assert exe, "the mlflow-deploy console script is not installed next to this Python"
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}

    def run(*args):
        return subprocess.run(
            [exe, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    ok = run("promote", "churn", "1", "--alias", "champion", "--sample", sample)
    assert ok.returncode == 0, ok.stderr
    assert "churn v1 -> churn-onnx v1 (converted); alias 'champion'" in ok.stdout
    assert MlflowClient().get_model_version_by_alias("churn-onnx", "champion").version in (1, "1")

    failed = run("promote", "churn", "7")
    assert failed.returncode == 1
    assert "Error: Registered model 'churn' has no version 7" in failed.stderr
    assert "Traceback" not in failed.stderr
