"""Shared by the mlserver tests (a uniquely named module: every test folder has a conftest.py)."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pandas as pd
import pytest

COLUMNS = ["age", "income", "tenure", "city"]
KEEPER = "keeper"


def churn_target(frame: pd.DataFrame) -> np.ndarray:
    score = (frame.age - 40) / 10 + (np.log(frame.income) - 10) * 2 + (frame.city == "lyon")
    return (score > 0).to_numpy()


def free_ports(count: int = 3) -> int:
    """A free 127.0.0.1 port whose next ``count - 1`` ports are free too (MLServer takes
    port+1 for gRPC and port+2 for metrics)."""
    from mlflow_deploy_plugins.targets import _endpoints

    while True:
        port = _endpoints.free_port()
        if not any(_endpoints.port_in_use("127.0.0.1", port + i) for i in range(1, count)):
            return port


def mlserver_missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{reason}; CI=true, so the MLServer tests must run (pip install '.[mlserver]')"
        )
    pytest.skip(f"{reason}: pip install -c tests/constraints.txt '.[mlserver]'")


@contextlib.contextmanager
def using_store(uri: str):
    """Point mlflow and its environment at ``uri`` for the duration (restored after)."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
