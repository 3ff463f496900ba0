"""Shared fixtures: a real local tracking store per test, tiny real datasets, a real Docker engine
and the local base image (the target tests of onnx-docker, onnx-sagemaker and the mlserver
target's docker mode use them).

Without an engine the Docker tests skip with the reason; with CI=true they fail instead, since
CI starts the engine itself (tests/infra/docker.sh) and nothing that can run may be skipped there.
"""

from __future__ import annotations

import os
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from docker_support import BASE_IMAGE, engine_unavailable, remove_test_images


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite tracking + registry store in tmp_path, set for mlflow and its clients."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """Numeric and string columns, 400 rows, deterministic."""
    rng = np.random.default_rng(0)
    n = 400
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10, 0.5, n),
            "tenure": rng.integers(0, 20, n).astype(float),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "plan": rng.choice(["basic", "pro"], n),
        }
    )


@pytest.fixture
def mixed_target(mixed_frame) -> np.ndarray:
    f = mixed_frame
    return (((f.age - 40) / 10 + (f.city == "lyon") * 1.5 - (f.plan == "pro")) > 0).to_numpy()


@pytest.fixture
def numeric_xy():
    """20 numeric features, a regression and a classification target."""
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(300, 20)), columns=[f"x{i}" for i in range(20)])
    y_reg = x["x0"] * 3 + x["x1"] ** 2 - x["x2"] + rng.normal(scale=0.1, size=300)
    y_cls = (y_reg > y_reg.median()).astype(int).to_numpy()
    return x, y_reg.to_numpy(), y_cls


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client of a running engine (skip or, under CI, fail without one)."""
    try:
        import docker
    except ImportError:
        engine_unavailable("the docker SDK is not installed (pip install '.[docker]')")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        engine_unavailable(f"no Docker engine answers ({e})")
    yield client
    remove_test_images(client)
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The local base image the tests build on (tests/infra/docker.sh makes it)."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        engine_unavailable(f"the local base image {BASE_IMAGE} is missing")
    return BASE_IMAGE


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole test run (starting one costs 5-10 s): one
    core, one shuffle partition, no UI, bound to 127.0.0.1; its Python workers run this
    interpreter (pandas, mlflow and this package). CI installs pyspark (the ``spark`` extra,
    pinned in constraints.txt) and a JRE; elsewhere the Spark tests skip without them."""
    if os.environ.get("CI"):
        import pyspark
    else:
        pyspark = pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[1]")
        .appName("mlflow-deploy-plugins-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    assert pyspark.__version__
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tf_promoted(tmp_path_factory):
    """Three tiny TensorFlow models (``tf_models``: Keras Sequential, two-input functional Keras,
    SavedModel) logged with ``mlflow.tensorflow``, registered and promoted to ``@champion`` once
    per session; the store stays set while the session's tests use it (they re-set its URI)."""
    pytest.importorskip("tensorflow")
    import tf_models
    from helpers import tracking_store

    from mlflow_deploy_plugins import promote

    root = tmp_path_factory.mktemp("tf-promoted")
    data = tf_models.data(seed=0)
    models = {
        "tf-mlp": (tf_models.keras_mlp(), data["x"], data["x"]),
        "tf-two-inputs": (
            tf_models.keras_two_inputs(),
            {"a": data["a"], "b": data["b"]},
            {"a": data["a"], "b": data["b"]},
        ),
        # no sample: the gate runs on rows synthesized from the input example
        "tf-module": (tf_models.saved_module(), data["x"], None),
    }
    with tracking_store(root) as uri:
        promotions = {}
        for name, (model, example, sample) in models.items():
            if hasattr(model, "predict"):
                output = model.predict(example, verbose=0)
            else:
                output = model(example).numpy()
            tf_models.log(model, name, example, output[:5])
            promotions[name] = promote(name, "1", "champion", sample=sample)
    return {"uri": uri, "root": root, "promotions": promotions, "models": models}


@pytest.fixture
def tf_store(tf_promoted, monkeypatch):
    """``tf_promoted`` with its store set for this test (restored after)."""
    uri = tf_promoted["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield tf_promoted
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
