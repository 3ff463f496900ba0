"""``mlflow-deploy drift``: exit status 0 / 2 / 1, in process and as the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.cli import main
from mlflow_deploy_plugins.monitoring.cli import EXIT_DRIFT, EXIT_ERROR, EXIT_NO_DRIFT

pytestmark = pytest.mark.slow


def _drift(*args: str):
    return CliRunner().invoke(main, ["drift", *args], catch_exceptions=False)


def test_exit_status_and_output(store, payload_logs, kit):
    uri = f"models:/{kit.ONNX}@champion"
    same = _drift(uri, "--current", str(payload_logs.same.dir))
    assert same.exit_code == EXIT_NO_DRIFT == 0, same.output
    assert "no_drift" in same.output and "Report: runs:/" in same.output

    shifted = _drift(uri, "--current", str(payload_logs.shifted.dir), "--json")
    assert shifted.exit_code == EXIT_DRIFT == 2, shifted.output
    doc = json.loads(shifted.output)
    assert doc["status"] == "drift" and sorted(doc["drifted_columns"]) == sorted(kit.SHIFTED)
    assert MlflowClient().get_run(doc["run_id"]).info.status == "FINISHED"

    report_only = _drift(uri, "--current", str(payload_logs.shifted.dir), "--no-fail-on-drift")
    assert report_only.exit_code == 0 and "drift (5/10 columns drifted" in report_only.output


def test_options_reach_the_report(store, payload_logs, kit):
    result = _drift(
        f"models:/{kit.MODEL}/1",
        "--current",
        str(payload_logs.shifted.dir),
        "--experiment",
        "cli-drift",
        "--num-method",
        "ks",
        "--cat-method",
        "psi",
        "--threshold",
        "0.05",
        "--drift-share",
        "0.9",
        "--column-method",
        "age=wasserstein",
        "--sample-size",
        "1000",
        "--since",
        "2000-01-01T00:00:00Z",
        "--json",
    )
    assert result.exit_code == 0, result.output  # drift share 0.9 not reached
    doc = json.loads(result.output)
    methods = {c["column"]: c["method"] for c in doc["columns"]}
    assert methods["age"] == "wasserstein" and methods["income"] == "ks"
    assert methods["plan"] == "psi"
    assert doc["current_rows"] == 1000 and doc["current_rows_seen"] == 1500
    params = MlflowClient().get_run(doc["run_id"]).data.params
    assert params["window.since"] == "2000-01-01T00:00:00+00:00" and params["sample_size"] == "1000"
    assert doc["experiment_name"] == "cli-drift"


def test_errors_exit_1(store, payload_logs, kit, tmp_path):
    uri = f"models:/{kit.ONNX}/1"
    future = _drift(uri, "--current", str(payload_logs.same.dir), "--since", "2999-01-01")
    assert future.exit_code == EXIT_ERROR == 1
    assert "Error: No payload records" in future.output
    nothing = _drift("models:/plain/1", "--current", str(payload_logs.same.dir))
    assert nothing.exit_code == 1 and "--reference" in nothing.output
    # usage errors exit 1 too: 2 is reserved for "drift detected"
    bad = _drift(uri, "--current", str(payload_logs.same.dir), "--column-method", "age")
    assert bad.exit_code == 1 and "COLUMN=METHOD" in bad.output
    assert _drift(uri, "--current", str(tmp_path / "nope")).exit_code == 1
    assert _drift(uri).exit_code == 1  # --current missing
    csv = tmp_path / "current.csv"
    kit.make_frame(300, seed=3).drop(columns=["plan"]).to_csv(csv, index=False)
    missing = _drift(uri, "--current", str(csv))
    assert missing.exit_code == 1 and "missing column(s) ['plan'" in missing.output


def test_installed_command_exit_status(store, payload_logs, kit):
    """The console script, as cron or CI would run it."""
    exe = shutil.which("mlflow-deploy", path=os.path.dirname(sys.executable))
    assert exe, "mlflow-deploy is not installed next to the interpreter"
    argv = [exe, "drift", f"models:/{kit.ONNX}/1", "--current", str(payload_logs.shifted.dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "DRIFT income" in proc.stdout
