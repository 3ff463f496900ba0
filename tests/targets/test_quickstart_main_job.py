"""The main job (examples/quickstart.py, what `bash examples/quickstart.sh` runs) end to end, as a
new user runs it: a fresh working directory, a SQLite store, nothing started by hand, the real
Docker engine. It must print the endpoint's answer and the drift verdict and leave nothing
running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from docker_support import BASE_IMAGE

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


@pytest.mark.docker
def test_the_main_job_runs_the_whole_loop_on_docker(docker_client, base_image, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["QUICKSTART_MODEL"] = f"churn-{tmp_path.name[-6:]}".replace("_", "-")
    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--target", "onnx-docker", "--base-image", BASE_IMAGE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    for step in range(1, 7):
        assert f"[{step}/6]" in done.stderr and "done in" in done.stderr
    assert "=== The endpoint's answer (http://127.0.0.1:" in out and "onnx-docker container" in out
    assert "400 rows answered" in out
    # the shifted batch is what the report sees drift in: the shifted columns are named
    assert "=== Drift verdict: DRIFT ===" in out
    for column in ("monthly_charges", "support_calls", "contract"):
        assert column in out.split("drifted columns:")[1].splitlines()[0]
    assert "drift_report.html" in out and (tmp_path / "mlflow.db").is_file()
    logged = [p for p in (tmp_path / "payload-log").rglob("*") if p.is_file()]
    assert logged, "the endpoint logged no payloads"
    leftovers = docker_client.containers.list(
        all=True,
        filters={"label": f"mlflow_deploy.deployment={env['QUICKSTART_MODEL']}-quickstart"},
    )
    assert leftovers == [], "the main job left its deployment running without --keep"
    for image in docker_client.images.list(name=f"mlflow-deploy/{env['QUICKSTART_MODEL']}-onnx"):
        docker_client.images.remove(image.id, force=True)
