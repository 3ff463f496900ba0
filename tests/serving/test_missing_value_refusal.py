"""Issue 11: a missing value in a column whose source refuses them is a 4xx naming the column,
on every protocol, never a made-up prediction (``mlflow models serve`` answers 400)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import REG_COLUMNS, v2_columns_body

from mlflow_deploy_plugins.core.manifest import MANIFEST_FILE, Manifest
from mlflow_deploy_plugins.serving import codecs
from mlflow_deploy_plugins.serving.errors import ServingError


@pytest.fixture(scope="module")
def reg_server(served, start_server):
    return start_server(served.reg_bundle, label="missing-values")


def _refused(reply, column: str):
    assert 400 <= reply.status < 500, reply.text
    assert column in reply.text and "missing values" in reply.text, reply.text


def test_the_source_refuses_nan_in_these_columns(served):
    bad = served.reg_frame.head(2).copy()
    bad.loc[1, "x2"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        served.reg.predict(bad)
    assert "x2" not in Manifest.read(served.reg_bundle).io.accepts_missing


def test_invocations_refuse_null_naming_the_column(served, reg_server):
    rows = served.reg_frame.head(3).to_numpy().tolist()
    rows[1][2] = None
    split = {"dataframe_split": {"columns": REG_COLUMNS, "data": rows}}
    _refused(reg_server.post("/invocations", json.dumps(split)), "x2")
    records = {"dataframe_records": [dict(zip(REG_COLUMNS, r, strict=True)) for r in rows]}
    _refused(reg_server.post("/invocations", json.dumps(records)), "x2")
    csv = ",".join(REG_COLUMNS) + "\n1,2,,4,5\n"
    _refused(reg_server.post("/invocations", csv, {"Content-Type": "text/csv"}), "x2")
    ok = {"dataframe_split": {"columns": REG_COLUMNS, "data": rows[:1]}}
    assert reg_server.post("/invocations", json.dumps(ok)).status == 200


def test_v2_refuses_nan_naming_the_column(served, reg_server):
    body = v2_columns_body(served.reg_frame.head(3))
    body["inputs"][3]["data"][0] = None  # JSON has no NaN: null is refused as before
    assert reg_server.post("/v2/models/reg/infer", json.dumps(body)).status == 422
    # the binary extension carries NaN itself
    values = served.reg_frame.head(3).to_numpy(dtype=np.float64).copy()
    values[1, 3] = np.nan
    inputs, blobs = [], []
    for j, column in enumerate(REG_COLUMNS):
        blob = values[:, j].tobytes()
        inputs.append(
            {
                "name": column,
                "datatype": "FP64",
                "shape": [3],
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    reply = reg_server.post(
        "/v2/models/reg/infer",
        header + b"".join(blobs),
        {
            "Content-Type": codecs.V2_BINARY_CONTENT_TYPE,
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    _refused(reply, "x3")


def test_a_bundle_without_the_record_refuses_missing_values(served, tmp_path):
    old = tmp_path / "old-bundle"
    shutil.copytree(served.converted_bundle, old)
    raw = json.loads((old / MANIFEST_FILE).read_text())
    raw["io"].pop("accepts_missing", None)
    (old / MANIFEST_FILE).write_text(json.dumps(raw))
    io = Manifest.read(str(old)).io
    assert io.accepts_missing == ()
    column = next(c for c, d in io.column_dtypes().items() if d.startswith("float"))
    row = {c: ("paris" if d == "string" else 1.0) for c, d in io.column_dtypes().items()}
    row[column] = None
    body = json.dumps({"dataframe_records": [row]}).encode()
    with pytest.raises(ServingError) as e:
        codecs.decode_mlflow(body, "application/json", io)
    assert e.value.status == 422 and column in str(e.value)
