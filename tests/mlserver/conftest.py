"""Fixtures of the mlserver tests: real models in a SQLite registry and ONE real MLServer process
per test session, started by the target itself (``-C mode=local``) on a free 127.0.0.1 port.

The server stays up for the session because a resident deployment (``keeper``, churn-onnx v1)
lives until the end: the target stops a local server with its last deployment. Without MLServer
installed the tests skip with the reason; with CI=true they fail instead.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
from helpers import churn_frame, mixed_pipeline, register_sklearn, tracking_store
from mlserver_support import (
    COLUMNS,
    KEEPER,
    churn_target,
    free_ports,
    mlserver_missing,
    using_store,
)


@pytest.fixture(scope="session")
def mlserver_models(tmp_path_factory):
    """churn v1 and v2 (different models), promoted to churn-onnx v1 and v2; pyfuncs of both."""
    import mlflow
    from sklearn.ensemble import GradientBoostingClassifier

    from mlflow_deploy_plugins import build_bundle, promote

    root = tmp_path_factory.mktemp("mlserver-models")
    (root / "store").mkdir()
    frame = churn_frame(300, seed=0)
    y = churn_target(frame)
    with tracking_store(root / "store") as uri:
        for version, (trees, depth) in enumerate([(5, 2), (30, 3)], start=1):
            clf = mixed_pipeline(
                GradientBoostingClassifier(n_estimators=trees, max_depth=depth, random_state=0),
                numeric=COLUMNS[:3],
                categorical=COLUMNS[3:],
            ).fit(frame, y)
            register_sklearn(clf, "churn", frame.head(5))
            promote("churn", str(version), "champion", sample=frame)
        bundle = build_bundle("models:/churn-onnx/1", str(root / "bundle-v1"))
        pyfuncs = {v: mlflow.pyfunc.load_model(f"models:/churn-onnx/{v}") for v in (1, 2)}
    return SimpleNamespace(uri=uri, frame=frame, bundle=bundle.path, pyfuncs=pyfuncs)


@pytest.fixture
def store(mlserver_models):
    """The session's registry as the current tracking store of one test."""
    with using_store(mlserver_models.uri) as uri:
        yield uri


@pytest.fixture(scope="session")
def mlserver(mlserver_models, tmp_path_factory):
    """The session's MLServer: a repository, a port, the deploy client, the resident ``keeper``
    deployment (churn-onnx v1) that keeps the server up."""
    import importlib.util

    from mlflow.deployments import get_deploy_client

    from mlflow_deploy_plugins.targets import _mlserver_process

    if importlib.util.find_spec("mlserver") is None:
        mlserver_missing("MLServer is not installed")
    repository = tmp_path_factory.mktemp("mlserver-repository")
    port = free_ports(3)
    target_uri = f"mlserver:{repository}"
    client = get_deploy_client(target_uri)
    server = _mlserver_process.LocalServer(repository, "mlserver")
    try:
        with using_store(mlserver_models.uri):
            client.create_deployment(KEEPER, "models:/churn-onnx/1", config={"port": str(port)})
        yield SimpleNamespace(
            target_uri=target_uri,
            repository=repository,
            port=port,
            url=f"http://127.0.0.1:{port}",
            client=client,
            server=server,
        )
    finally:
        for info in client.list_deployments():
            with contextlib.suppress(Exception):
                client.delete_deployment(info["name"])
        server.stop(10)
