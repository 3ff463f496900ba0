"""Issue 11: a category XGBoost never saw in training is refused by the source ("not in the
training set"); the runtime answers 422 naming the column and the value on every protocol (JSON,
CSV, V2 JSON and binary), never the prediction of a made-up (missing) category. A bundle built
from an XGBoost model trained on a pandas ``category`` column, served for real."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost
from helpers import PIP, tracking_store

from mlflow_deploy_plugins import build_bundle
from mlflow_deploy_plugins.core.manifest import Manifest
from mlflow_deploy_plugins.serving import codecs

LEVELS = ["north", "south", "east", "west"]
COLUMNS = ["a", "b", "region"]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 2)), columns=["a", "b"])
    df["region"] = pd.Categorical(rng.choice(LEVELS, n), categories=LEVELS)
    return df


@pytest.fixture(scope="module")
def xgb(tmp_path_factory, start_server):
    root = tmp_path_factory.mktemp("unseen")
    (root / "store").mkdir()
    train = frame(600, 0)
    y = ((train["a"] + (train["region"] == "south") * 1.5) > 0.3).astype(int).to_numpy()
    model = xgboost.XGBClassifier(n_estimators=15, enable_categorical=True).fit(train, y)
    with tracking_store(root / "store"):
        with mlflow.start_run():
            info = mlflow.xgboost.log_model(model, name="model", pip_requirements=PIP)
        bundle = build_bundle(info.model_uri, str(root / "bundle"), sample=frame(400, 1))
    assert Manifest.read(bundle.path).io.extra["unseen_categories"] == "refuse"
    server = start_server(bundle.path, label="unseen-categories")
    server.infer = f"/v2/models/{Manifest.read(bundle.path).name}/infer"
    server.bundle_path = bundle.path
    return model, server


def _rows(n: int = 4) -> list[list]:
    fresh = frame(n, 2)
    return [[a, b, str(r)] for a, b, r in fresh.itertuples(index=False)]


def _refused(reply, value: str):
    assert reply.status == 422, (reply.status, reply.text)
    body = json.loads(reply.text)
    assert body["field"] == "region", body
    message = body.get("message") or body["error"]  # MLflow's error body, V2's
    assert f"'{value}'" in message and "never saw" in message, body


def test_known_categories_are_answered_like_the_source(xgb):
    model, server = xgb
    rows = _rows(6)
    split = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    reply = server.post("/invocations", json.dumps(split))
    assert reply.status == 200, reply.text
    native = pd.DataFrame(rows, columns=COLUMNS).astype({"region": pd.CategoricalDtype(LEVELS)})
    assert json.loads(reply.text)["predictions"] == model.predict(native).tolist()


@pytest.mark.parametrize("value", ["zzz", "aaa"])  # "aaa" sorts before every training category
def test_invocations_refuse_an_unseen_category_naming_column_and_value(xgb, value):
    _, server = xgb
    rows = _rows()
    rows[2][2] = value
    split = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    _refused(server.post("/invocations", json.dumps(split)), value)
    records = {"dataframe_records": [dict(zip(COLUMNS, r, strict=True)) for r in rows]}
    _refused(server.post("/invocations", json.dumps(records)), value)
    csv = "a,b,region\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    _refused(server.post("/invocations", csv, {"Content-Type": "text/csv"}), value)


def test_v2_refuses_an_unseen_category_json_and_binary(xgb):
    _, server = xgb
    rows = _rows()
    rows[1][2] = "atlantis"
    columns = list(zip(*rows, strict=True))
    body = {
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [4], "data": list(columns[0])},
            {"name": "b", "datatype": "FP64", "shape": [4], "data": list(columns[1])},
            {"name": "region", "datatype": "BYTES", "shape": [4], "data": list(columns[2])},
        ]
    }
    _refused(server.post(server.infer, json.dumps(body)), "atlantis")

    blobs = [np.asarray(columns[0], dtype=np.float64).tobytes()]
    blobs.append(np.asarray(columns[1], dtype=np.float64).tobytes())
    blobs.append(b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in columns[2]))
    inputs = [
        {"name": n, "datatype": d, "shape": [4], "parameters": {"binary_data_size": len(blob)}}
        for n, d, blob in zip(COLUMNS, ["FP64", "FP64", "BYTES"], blobs, strict=True)
    ]
    header = json.dumps({"inputs": inputs}).encode()
    reply = server.post(
        server.infer,
        header + b"".join(blobs),
        {
            "Content-Type": codecs.V2_BINARY_CONTENT_TYPE,
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    _refused(reply, "atlantis")


def test_a_missing_category_is_answered_like_the_source(xgb):
    """A missing region (JSON null, an empty CSV cell or an NA token, as pandas reads them) is
    not an unseen category: XGBoost reads it as missing and answers; so do we, with the source's
    predictions. Before, null was refused as a missing value the source 'refuses' and an empty
    CSV cell was refused as the category ''."""
    model, server = xgb
    rows = _rows(6)
    for i in (1, 4):
        rows[i][2] = None
    native = pd.DataFrame(rows, columns=COLUMNS).astype({"region": pd.CategoricalDtype(LEVELS)})
    expected = model.predict(native).tolist()
    assert native["region"].isna().sum() == 2
    assert "region" in Manifest.read(server.bundle_path).io.accepts_missing

    split = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    reply = server.post("/invocations", json.dumps(split))
    assert reply.status == 200, reply.text
    assert json.loads(reply.text)["predictions"] == expected
    for cell in ("", "NA", "null"):
        lines = ["a,b,region", *(f"{a},{b},{cell if r is None else r}" for a, b, r in rows)]
        reply = server.post("/invocations", "\n".join(lines) + "\n", {"Content-Type": "text/csv"})
        assert reply.status == 200, (cell, reply.text)
        assert json.loads(reply.text)["predictions"] == expected, cell
