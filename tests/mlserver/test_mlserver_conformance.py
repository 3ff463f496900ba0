"""One corpus of requests (V2 per-column and tensor-shaped, strings for the categorical column,
requested outputs, bad inputs; MLflow scoring JSON and CSV) sent to our own runtime and to
MLServer + our runtime, serving the same bundle: both must answer the same way (the runtime
shares the decoding, binding and encoding code, it does not copy it)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import churn_frame
from mlserver_support import KEEPER

pytestmark = pytest.mark.mlserver

FRAME = churn_frame(3, seed=11)


def column(name, datatype="FP64", shape=None, data=None):
    values = FRAME[name].tolist() if data is None else data
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape or [len(values)],
        "data": values,
    }


def per_column(**overrides):
    inputs = []
    for name in FRAME.columns:
        if name in overrides:
            if overrides[name] is not None:
                inputs.append(overrides[name])
            continue
        datatype = "BYTES" if name == "city" else "FP64"
        inputs.append(column(name, datatype))
    return {"inputs": inputs}


def nested(name, datatype="FP64"):
    return column(name, datatype, [3, 1], [[v] for v in FRAME[name].tolist()])


#: name -> (V2 request body, who refuses: None (answered), "ours" (our decoder: same status and
#: message), "mlserver" (MLServer's own request validation first: both refuse with a 4xx),
#: "coerced" (we refuse; MLServer's parser repairs it, then answers like the valid request))
V2_CORPUS = {
    "per-column": (per_column(), None),
    "per-column with id": ({**per_column(), "id": "req-7"}, None),
    "tensor-shaped [N,1] inputs": (
        {"inputs": [nested(c, "BYTES" if c == "city" else "FP64") for c in FRAME.columns]},
        None,
    ),
    "ints for a float column": (
        per_column(tenure=column("tenure", "INT64", data=[int(v) for v in FRAME.tenure])),
        None,
    ),
    "only the label": ({**per_column(), "outputs": [{"name": "label"}]}, None),
    "only the probabilities": ({**per_column(), "outputs": [{"name": "probabilities"}]}, None),
    "a missing column": (per_column(city=None), "ours"),
    "an unknown input": (
        {"inputs": [*per_column()["inputs"], column("zip", data=[1.0, 2.0, 3.0])]},
        "ours",
    ),
    "strings in a numeric column": (
        per_column(age=column("age", "BYTES", data=["a", "b", "c"])),
        "ours",
    ),
    "numbers for the categorical column": (
        per_column(city=column("city", "FP64", data=[1.0, 2.0, 3.0])),
        "ours",
    ),
    "data shorter than the shape": (
        per_column(age=column("age", shape=[3], data=[1.0, 2.0])),
        "ours",
    ),
    "columns of different lengths": (
        per_column(age=column("age", data=[1.0, 2.0])),
        "ours",
    ),
    "null in a column that refuses missing values": (
        per_column(city=column("city", "BYTES", data=["paris", None, "nice"])),
        "ours",
    ),
    "an unknown output": ({**per_column(), "outputs": [{"name": "score"}]}, "ours"),
    "no inputs": ({"inputs": []}, "ours"),
    "not a V2 datatype": (per_column(age=column("age", "FLOAT")), "mlserver"),
    # MLServer's request model (pydantic, lax) turns "3" into 3 before our decoder sees it: the
    # one known difference (docs/targets/mlserver.md, limits)
    "a shape of strings": (per_column(age=column("age", shape=["3"])), "coerced"),
}

MLFLOW_CORPUS = {
    "dataframe_split": (
        "application/json",
        json.dumps({"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}),
    ),
    "dataframe_records": (
        "application/json",
        json.dumps({"dataframe_records": json.loads(FRAME.to_json(orient="records"))}),
    ),
    "predict_proba": (
        "application/json",
        json.dumps(
            {
                "dataframe_records": json.loads(FRAME.to_json(orient="records")),
                "params": {"predict_method": "predict_proba"},
            }
        ),
    ),
    "csv": ("text/csv", FRAME.to_csv(index=False)),
    "a missing column": (
        "application/json",
        json.dumps(
            {"dataframe_records": json.loads(FRAME.drop(columns="age").to_json(orient="records"))}
        ),
    ),
    "an unknown predict_method": (
        "application/json",
        json.dumps(
            {
                "dataframe_records": json.loads(FRAME.to_json(orient="records")),
                "params": {"predict_method": "explain"},
            }
        ),
    ),
    "not JSON": ("application/json", "{dataframe_records"),
}


def send(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def ours(mlserver_models, tmp_path_factory):
    """Our own runtime on the same bundle, under the MLServer deployment's model name."""
    from mlflow_deploy_plugins.targets._endpoints import free_port, http_ready

    port = free_port()
    log = tmp_path_factory.mktemp("ours") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve",
             mlserver_models.bundle, "--port", str(port), "--model-name", KEEPER],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not http_ready(f"http://127.0.0.1:{port}/v2/health/ready"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def same_outputs(a: list[dict], b: list[dict]) -> None:
    assert [(o["name"], o["datatype"], o["shape"]) for o in a] == [
        (o["name"], o["datatype"], o["shape"]) for o in b
    ]
    for x, y in zip(a, b, strict=True):
        if x["datatype"] == "BYTES":
            assert x["data"] == y["data"]
        else:
            np.testing.assert_allclose(x["data"], y["data"], rtol=1e-6)


@pytest.mark.parametrize("case", list(V2_CORPUS), ids=list(V2_CORPUS))
def test_v2_answers_are_the_same(mlserver, ours, case):
    body, refused_by = V2_CORPUS[case]
    data = json.dumps(body).encode()
    path = f"/v2/models/{KEEPER}/infer"
    our_status, our_answer = send(ours + path, data)
    their_status, their_answer = send(mlserver.url + path, data)
    if refused_by is None:
        assert our_status == their_status == 200, (our_answer, their_answer)
        same_outputs(our_answer["outputs"], their_answer["outputs"])
        assert their_answer["model_name"] == our_answer["model_name"] == KEEPER
        if "id" in body:
            assert their_answer["id"] == our_answer["id"] == body["id"]
    elif refused_by == "ours":
        assert 400 <= our_status < 500, our_answer
        assert their_status == our_status, their_answer
        assert their_answer["error"] == our_answer["error"]
    elif refused_by == "mlserver":
        assert 400 <= our_status < 500 and 400 <= their_status < 500, (our_answer, their_answer)
    else:
        assert 400 <= our_status < 500 and their_status == 200, (our_answer, their_answer)
        _, valid = send(ours + path, json.dumps(per_column()).encode())
        same_outputs(valid["outputs"], their_answer["outputs"])


@pytest.mark.parametrize("case", list(MLFLOW_CORPUS), ids=list(MLFLOW_CORPUS))
def test_mlflow_scoring_answers_are_the_same(mlserver, ours, case):
    content_type, body = MLFLOW_CORPUS[case]
    our_status, our_answer = send(ours + "/invocations", body.encode(), content_type)
    path = f"/v2/models/{KEEPER}/invocations"
    their_status, their_answer = send(mlserver.url + path, body.encode(), content_type)
    assert their_status == our_status, (our_answer, their_answer)
    if our_status == 200:
        ours_p, theirs_p = our_answer["predictions"], their_answer["predictions"]
        assert np.asarray(ours_p).shape == np.asarray(theirs_p).shape
        flat = zip(np.ravel(ours_p).tolist(), np.ravel(theirs_p).tolist(), strict=True)
        assert all(a == b or math.isclose(a, b, rel_tol=1e-6) for a, b in flat)
    else:
        assert their_answer == our_answer


def test_metadata_is_our_runtimes(mlserver, ours):
    with urllib.request.urlopen(f"{ours}/v2/models/{KEEPER}", timeout=10) as r:
        our_doc = json.loads(r.read())
    with urllib.request.urlopen(f"{mlserver.url}/v2/models/{KEEPER}", timeout=10) as r:
        their_doc = json.loads(r.read())
    for key in ("name", "platform", "inputs", "outputs"):
        assert their_doc[key] == our_doc[key], key
    assert their_doc["parameters"]["columns"] == our_doc["parameters"]["columns"]
