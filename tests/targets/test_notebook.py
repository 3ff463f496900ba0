"""The example notebook (examples/churn_notebook.ipynb) executed cell by cell with nbclient on a
real Jupyter kernel, against the real Docker engine: train, register, promote, deploy, predict,
drift report, clean up. Its outputs are kept out of git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from docker_support import BASE_IMAGE

from mlflow_deploy_plugins.targets import _endpoints

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "churn_notebook.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]


@pytest.mark.docker
def test_the_notebook_runs_end_to_end(docker_client, base_image, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    for key in [k for k in __import__("os").environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    name = f"churn-nb-{tmp_path.name[-6:]}".replace("_", "-")
    monkeypatch.setenv("NOTEBOOK_MODEL", name)
    monkeypatch.setenv("NOTEBOOK_PORT", str(_endpoints.free_port()))
    monkeypatch.setenv("QUICKSTART_BASE_IMAGE", BASE_IMAGE)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    try:
        nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"mlflow_deploy.deployment={name}-endpoint"}
        ):
            container.remove(force=True)
        for image in docker_client.images.list(name=f"mlflow-deploy/{name}-onnx"):
            docker_client.images.remove(image.id, force=True)

    def text(cell) -> str:
        parts = []
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
        return "".join(parts)

    everything = "\n".join(text(c) for c in notebook.cells if c.cell_type == "code")
    assert f"{name} v1 -> {name}-onnx v1 (converted)" in everything
    assert (
        "'status': 'running'" in everything and "'endpoint_url': 'http://127.0.0.1:" in everything
    )
    assert "'predictions':" in everything
    assert "drift (" in everything and "monthly_charges" in everything.split("drifted columns:")[1]
    assert "mlflow_deploy.drift.status" in everything
    assert everything.rstrip().endswith("[]"), "the last cell lists no deployment after cleanup"
