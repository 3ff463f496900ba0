"""Codecs: V2 (JSON + binary extension) and MLflow scoring bodies <-> feeds, and the error map.

IOSpecs are built by hand: a mixed table (3 float columns, one with a non-ASCII name, + 1 string
column, bound one input per column) and one [N, 20] float32 matrix input. Golden and hostile
bodies live in testdata/.
"""

from __future__ import annotations

import dataclasses
import io as stdio
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from mlflow_deploy_plugins.core.constants import NAMED_COLUMNS
from mlflow_deploy_plugins.core.iospec import (
    LABEL,
    PROBABILITIES,
    VALUE,
    InputBinding,
    IOSpec,
    OutputSpec,
    SchemaError,
)
from mlflow_deploy_plugins.serving import codecs
from mlflow_deploy_plugins.serving.codecs.base import plan_for
from mlflow_deploy_plugins.serving.codecs.v2_bind import bind_v2, v2_columns_fast
from mlflow_deploy_plugins.serving.codecs.v2_decode import v2_inputs
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    from_schema_error,
)

DATA = Path(__file__).parent / "testdata"
FLOATS = ("age", "income", "température")
COLUMNS = [*FLOATS, "city"]
FEATURES = tuple(f"f{i}" for i in range(20))

MIXED = IOSpec(
    inputs=tuple(InputBinding(c, (c,), "float32", (None, 1)) for c in FLOATS)
    + (InputBinding("city", ("city",), "string", (None, 1)),),
    outputs=(
        OutputSpec("label", "int64", LABEL, (None,)),
        OutputSpec("probabilities", "float32", PROBABILITIES, (None, 2)),
    ),
    task="classification",
    classes=(0, 1),
    default_role=LABEL,
    # a source that accepts missing values everywhere: null decodes to NaN, as pandas reads it
    accepts_missing=(*FLOATS, "city"),
)
MATRIX = IOSpec(
    inputs=(InputBinding("X", FEATURES, "float32", (None, 20)),),
    outputs=(OutputSpec("variable", "float32", VALUE, (None,)),),
    task="regression",
    default_role=VALUE,
)
# The golden rows (testdata/mlflow/*, testdata/v2/mixed_columns.json).
AGE, INCOME, TEMP, CITY = [41.5, 23], [52000.25, 18000], [21, -3], ["paris", "Zürich"]
F = np.array([round(0.1 * i - 0.7, 3) for i in range(20)], dtype=np.float32)
G = np.array([round(1.5 - 0.25 * i, 3) for i in range(20)], dtype=np.float32)
JSON = "application/json"


def body_of(name: str) -> bytes:
    return (DATA / name).read_bytes()


def v2(body: bytes | dict, io: IOSpec = MATRIX, headers: dict | None = None, **kw):
    if isinstance(body, dict | list):
        body = orjson.dumps(body)
    return codecs.decode_v2(body, headers or {}, io, **kw)


def assert_mixed_feed(feed: dict, age=AGE, income=INCOME, temp=TEMP, city=CITY):
    assert list(feed) == COLUMNS
    for name, values in zip(FLOATS, (age, income, temp), strict=True):
        assert feed[name].dtype == np.float32 and feed[name].shape == (len(values), 1), name
        np.testing.assert_array_equal(feed[name][:, 0], np.asarray(values, dtype=np.float32))
    assert feed["city"].dtype == object and feed["city"][:, 0].tolist() == city


# ====================================================================== V2: golden requests
def test_v2_matrix_one_row_golden():
    req = v2(body_of("v2/matrix_1row.json"))
    assert req.id == "golden-1" and req.n_rows == 1
    assert req.feed["X"].dtype == np.float32 and req.feed["X"].shape == (1, 20)
    np.testing.assert_array_equal(req.feed["X"][0], F)
    assert req.requested_outputs is None and req.binary_outputs == frozenset()
    # the payload log's columns, derived from the tensor on demand
    assert list(req.columns) == list(FEATURES)
    np.testing.assert_array_equal(req.columns["f3"], F[[3]])


def test_v2_matrix_nested_data_and_requested_output():
    req = v2(body_of("v2/matrix_nested_2rows.json"))
    np.testing.assert_array_equal(req.feed["X"], np.stack([F, G]))
    assert req.requested_outputs == ["variable"] and req.binary_outputs == frozenset()


def test_v2_one_input_per_column_builds_the_matrix():
    req = v2(body_of("v2/matrix_per_column.json"))
    assert req.n_rows == 2 and list(req.feed) == ["X"]
    assert req.feed["X"].dtype == np.float32
    np.testing.assert_array_equal(req.feed["X"], np.stack([F, G]))
    assert req.columns["f0"].tolist() == [F[0], G[0]]


def test_v2_mixed_columns_unicode_names_bytes_and_binary_output_flags():
    req = v2(body_of("v2/mixed_columns.json"), MIXED)
    assert req.id == "mixed-7" and req.n_rows == 2
    assert_mixed_feed(req.feed)
    assert req.columns["température"].tolist() == [21.0, -3.0]
    # per-output binary_data wins over the request-level binary_data_output
    assert req.requested_outputs == ["probabilities", "label"]
    assert req.binary_outputs == frozenset({"probabilities"})
    assert req.parameters == {"binary_data_output": True, "priority": 0}


def test_v2_request_level_binary_data_output_applies_to_all_outputs():
    req = v2(
        {"inputs": [_input("X", "FP32", [1, 20], F)], "parameters": {"binary_data_output": True}}
    )
    assert req.requested_outputs is None and req.binary_outputs == frozenset({"variable"})


def test_v2_column_inputs_accept_other_numeric_datatypes_but_tensors_do_not():
    ok = {"inputs": [_input(f, "INT32", [1], [i]) for i, f in enumerate(FEATURES)]}
    np.testing.assert_array_equal(v2(ok).feed["X"], np.arange(20, dtype=np.float32)[None])
    with pytest.raises(Unprocessable, match="FP64; the model expects FP32") as e:
        v2({"inputs": [_input("X", "FP64", [1, 20], F)]})
    assert e.value.field == "X"


def test_v2_feed_is_ready_for_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X"], ["variable"], axes=[1], keepdims=0)],
        "sum",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 20])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for body, headers in (
        (body_of("v2/matrix_nested_2rows.json"), {}),
        _triton_body([("X", np.stack([F, G]))]),
    ):
        req = codecs.decode_v2(body, headers, MATRIX)
        (out,) = session.run(None, req.feed)
        np.testing.assert_allclose(out, [F.sum(), G.sum()], rtol=1e-6)


# ====================================================================== V2: hostile corpus
HOSTILE_V2 = [
    # file, spec, error class, field, words the message must contain
    ("v2_truncated.json", MATRIX, BadRequest, None, "truncated"),
    ("v2_nan.json", MATRIX, BadRequest, None, "NaN and Infinity"),
    ("v2_infinity.json", MATRIX, BadRequest, None, "NaN and Infinity"),
    ("v2_negative_infinity.json", MATRIX, BadRequest, None, "NaN and Infinity"),
    ("v2_deep_nesting_json.json", MATRIX, BadRequest, None, "nested too deeply"),
    ("v2_deep_nesting_data.json", MATRIX, BadRequest, "X", "nested list"),
    ("v2_huge_shape.json", MATRIX, PayloadTooLarge, "X", "at most"),
    ("v2_shape_vs_data.json", MATRIX, Unprocessable, "X", "20 elements) but 19 values"),
    ("v2_wrong_width.json", MATRIX, Unprocessable, "X", "expects [-1, 20]"),
    ("v2_wrong_datatype.json", MATRIX, Unprocessable, "X", "expects FP32"),
    ("v2_string_in_numeric.json", MATRIX, Unprocessable, "X", '"abc"'),
    ("v2_null_in_numeric.json", MATRIX, Unprocessable, "X", "null"),
    ("v2_unknown_input.json", MATRIX, Unprocessable, "x_typo", "inputs are ['X']"),
    ("v2_empty_batch.json", MATRIX, Unprocessable, None, "no rows"),
    ("v2_data_not_list.json", MATRIX, BadRequest, "X", "'data'"),
    ("v2_ragged_data.json", MATRIX, BadRequest, "X", "rows of equal length"),
    ("v2_not_an_object.json", MATRIX, BadRequest, None, "JSON object"),
    ("v2_no_inputs.json", MATRIX, BadRequest, "inputs", "'inputs'"),
    ("v2_shape_not_ints.json", MATRIX, BadRequest, "X", "non-negative integers"),
    ("v2_negative_dim.json", MATRIX, BadRequest, "X", "non-negative integers"),
    ("v2_bad_datatype_name.json", MATRIX, BadRequest, "X", "FLOAT32"),
    ("v2_duplicate_input.json", MATRIX, BadRequest, "X", "more than once"),
    ("v2_unknown_output.json", MATRIX, Unprocessable, "probabilities", "outputs are ['variable']"),
    ("v2_fraction_in_int.json", MATRIX, Unprocessable, "f0", "1.5"),
    ("v2_mixed_missing_column.json", MIXED, Unprocessable, "température", "Missing input"),
    ("v2_mixed_number_as_city.json", MIXED, Unprocessable, "city", "strings"),
    ("v2_mixed_city_as_fp32.json", MIXED, Unprocessable, "city", "send BYTES"),
    ("v2_mixed_unicode_wrong_type.json", MIXED, Unprocessable, "température", "float32"),
    ("v2_mixed_row_counts.json", MIXED, Unprocessable, "income", "different numbers of rows"),
    ("empty.json", MATRIX, BadRequest, None, "empty"),
    ("not_utf8.json", MATRIX, BadRequest, None, "UTF-8"),
]


@pytest.mark.parametrize(
    "name, io, error, field, words", HOSTILE_V2, ids=[c[0] for c in HOSTILE_V2]
)
def test_v2_hostile_corpus(name, io, error, field, words):
    with pytest.raises(ServingError) as caught:
        v2(body_of(f"hostile/{name}"), io)
    e = caught.value
    assert type(e) is error, e
    assert e.field == field
    assert words in e.message
    if field is not None:
        assert field in e.message  # the message names the input at fault
    body = json.loads(e.to_body())
    assert body["error"] == e.message and "Traceback" not in e.message


def test_v2_max_elements_is_checked_before_any_allocation():
    body = {"inputs": [_input("X", "FP32", [1, 20], F)]}
    with pytest.raises(PayloadTooLarge) as e:
        v2(body, max_elements=19)
    assert e.value.status == 413 and e.value.field == "X"


def test_v2_mixing_tensor_and_column_names():
    with pytest.raises(Unprocessable, match="mix the model's inputs") as e:
        v2({"inputs": [_input("X", "FP32", [1, 20], F), _input("f0", "FP32", [1], [1])]})
    assert e.value.field == "f0"


def test_v2_wrong_types_in_the_structure():
    cases = [
        ({"inputs": [_input("X", "FP32", [1, 20], F)], "id": 7}, "id"),
        ({"inputs": [_input("X", "FP32", [1, 20], F)], "parameters": [1]}, "parameters"),
        ({"inputs": [_input("X", "FP32", [1, 20], F)], "outputs": {"name": "v"}}, "outputs"),
        ({"inputs": [_input("X", "FP32", [1, 20], F)], "outputs": [{"n": 1}]}, "outputs"),
        ({"inputs": ["X"]}, "inputs"),
        ({"inputs": [{"name": 5}]}, "inputs"),
    ]
    for body, field in cases:
        with pytest.raises(BadRequest) as e:
            v2(body)
        assert e.value.field == field, body


def test_v2_bool_and_integer_ranges():
    io = IOSpec(
        inputs=(
            InputBinding("flag", ("flag",), "bool", (None, 1)),
            InputBinding("n", ("n",), "int32", (None, 1)),
        ),
        outputs=(OutputSpec("y", "float32"),),
    )
    ok = v2(
        {"inputs": [_input("flag", "BOOL", [2], [True, False]), _input("n", "INT64", [2], [1, 2])]},
        io,
    )
    assert ok.feed["flag"].dtype == np.bool_ and ok.feed["n"].dtype == np.int32
    with pytest.raises(Unprocessable, match="outside the range of int32") as e:
        v2(
            {"inputs": [_input("flag", "BOOL", [1], [True]), _input("n", "INT64", [1], [2**40])]},
            io,
        )
    assert e.value.field == "n"
    with pytest.raises(Unprocessable, match="true/false") as e:
        v2({"inputs": [_input("flag", "BOOL", [1], [1]), _input("n", "INT64", [1], [1])]}, io)
    assert e.value.field == "flag"
    with pytest.raises(Unprocessable, match="send BOOL"):
        v2({"inputs": [_input("flag", "INT8", [1], [1]), _input("n", "INT64", [1], [1])]}, io)


# ====================================================================== V2: binary extension
def _input(name, datatype, shape, data):
    return {"name": name, "datatype": datatype, "shape": shape, "data": np.asarray(data).tolist()}


def _triton_body(arrays, outputs=None, binary=True):
    inputs = []
    for name, arr in arrays:
        datatype = "BYTES" if arr.dtype == object else _triton_dtype(arr)
        inp = httpclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    headers = {} if json_size is None else {"inference-header-content-length": str(json_size)}
    return body, headers


def _triton_dtype(arr):
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(arr.dtype)


def test_tritonclient_binary_matrix_request_round_trip():
    x = np.stack([F, G, F * 2])
    outputs = [httpclient.InferRequestedOutput("variable", binary_data=True)]
    body, headers = _triton_body([("X", x)], outputs)
    assert headers  # the binary extension is in use
    req = codecs.decode_v2(body, headers, MATRIX)
    np.testing.assert_array_equal(req.feed["X"], x)
    assert req.requested_outputs == ["variable"] and req.binary_outputs == {"variable"}

    y = x.sum(axis=1).astype(np.float32)
    out, extra = codecs.encode_v2(
        "churn", "3", "r-1", {"variable": y}, MATRIX, req.requested_outputs, req.binary_outputs
    )
    ((name, value),) = extra
    assert name == "Inference-Header-Content-Length"
    result = httpclient.InferenceServerClient.parse_response_body(out, header_length=int(value))
    np.testing.assert_array_equal(result.as_numpy("variable"), y)
    response = result.get_response()
    assert response["model_name"] == "churn" and response["model_version"] == "3"
    assert response["id"] == "r-1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes


def test_tritonclient_binary_mixed_columns_with_bytes_and_unicode():
    arrays = [
        ("age", np.array([[41.5], [23]], dtype=np.float32)),
        ("income", np.array(INCOME, dtype=np.float64)),
        ("température", np.array(TEMP, dtype=np.int64)),
        ("city", np.array(CITY, dtype=object)),
    ]
    body, headers = _triton_body(arrays)  # no outputs: tritonclient asks for all, binary
    req = codecs.decode_v2(body, headers, MIXED)
    assert_mixed_feed(req.feed)
    assert req.requested_outputs is None
    assert req.binary_outputs == frozenset({"label", "probabilities"})

    outputs = {
        "label": np.array([1, 0], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float32),
        "names": np.array(["oui", "Zürich"], dtype=object),
    }
    out, extra = codecs.encode_v2(
        "m", None, None, outputs, MIXED, None, {"label", "probabilities", "names"}
    )
    result = httpclient.InferenceServerClient.parse_response_body(
        out, header_length=int(dict(extra)["Inference-Header-Content-Length"])
    )
    np.testing.assert_array_equal(result.as_numpy("label"), outputs["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), outputs["probabilities"])
    assert result.as_numpy("names").tolist() == [s.encode() for s in outputs["names"]]
    assert "model_version" not in result.get_response() and "id" not in result.get_response()


def test_tritonclient_json_request_and_json_response():
    outputs = [httpclient.InferRequestedOutput("variable", binary_data=False)]
    body, headers = _triton_body([("X", F[None])], outputs, binary=False)
    assert headers == {}
    req = codecs.decode_v2(body, headers, MATRIX)
    assert req.binary_outputs == frozenset()
    y = np.array([[1.5]], dtype=np.float32)
    out, extra = codecs.encode_v2("m", "1", None, {"variable": y}, MATRIX, ["variable"], ())
    assert extra == []
    doc = json.loads(out)
    assert doc["outputs"] == [
        {"name": "variable", "datatype": "FP32", "shape": [1, 1], "data": [1.5]}
    ]
    result = httpclient.InferenceServerClient.parse_response_body(out)
    np.testing.assert_array_equal(result.as_numpy("variable"), y)


def test_v2_binary_hostile():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": [1, 20],
                    "parameters": {"binary_data_size": 80},
                }
            ]
        }
    )
    good = header + F.tobytes()
    assert v2(good, headers={"inference-header-content-length": str(len(header))}).n_rows == 1

    def fails(body, length, error, words):
        with pytest.raises(error, match=words):
            v2(body, headers={"inference-header-content-length": str(length)})

    fails(good, len(good) + 1, BadRequest, "between 0 and the body size")
    fails(good, "12x", BadRequest, "Inference-Header-Content-Length")
    fails(good[:-4], len(header), BadRequest, "only 76 bytes")
    fails(good + b"\0\0\0\0", len(header), BadRequest, "4 bytes after")
    odd = header.replace(b"80", b"76")
    fails(odd + F.tobytes()[:76], len(odd), Unprocessable, "takes 80 bytes")
    with pytest.raises(BadRequest, match="no Inference-Header-Content-Length"):
        v2(good[: len(header)])
    # BYTES: length prefixes that overrun, and invalid UTF-8
    city = struct.pack("<I", 10) + b"paris"
    with pytest.raises(BadRequest, match="truncated"):
        _mixed_binary_city(city)
    with pytest.raises(Unprocessable, match="UTF-8") as e:
        _mixed_binary_city(struct.pack("<I", 2) + b"\xff\xfe")
    assert e.value.field == "city"
    with pytest.raises(Unprocessable, match="declares 1 elements"):
        _mixed_binary_city(struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b")


def _mixed_binary_city(raw: bytes):
    inputs = [_input(c, "FP32", [1], [1]) for c in FLOATS]
    inputs.append(
        {
            "name": "city",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(raw)},
        }
    )
    header = orjson.dumps({"inputs": inputs})
    return v2(header + raw, MIXED, {"inference-header-content-length": str(len(header))})


# ====================================================================== V2 encode
def test_encode_v2_json_is_row_major_and_typed():
    outputs = {
        "label": np.array([1, 0], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        "flags": np.array([True, False]),
        "names": np.array(["a", "é"], dtype=object),
        "half": np.array([1.5], dtype=np.float16),
    }
    out, extra = codecs.encode_v2("m", "2", "id-1", outputs, MIXED)
    assert extra == []
    doc = json.loads(out)
    assert doc["model_name"] == "m" and doc["model_version"] == "2" and doc["id"] == "id-1"
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert [o["name"] for o in doc["outputs"]][:2] == ["label", "probabilities"]  # spec order
    assert by_name["probabilities"] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [0.25, 0.75, 0.5, 0.5],
    }
    assert by_name["label"]["datatype"] == "INT64" and by_name["label"]["data"] == [1, 0]
    assert by_name["flags"]["datatype"] == "BOOL" and by_name["flags"]["data"] == [True, False]
    assert by_name["names"]["datatype"] == "BYTES" and by_name["names"]["data"] == ["a", "é"]
    assert by_name["half"]["datatype"] == "FP16"
    # requested order and subset
    out, _ = codecs.encode_v2("m", "2", None, outputs, MIXED, ["probabilities"])
    assert [o["name"] for o in json.loads(out)["outputs"]] == ["probabilities"]
    # a non-contiguous output is serialised row-major
    t = np.arange(6, dtype=np.float32).reshape(2, 3).T
    out, _ = codecs.encode_v2("m", "2", None, {"t": t}, MIXED)
    assert json.loads(out)["outputs"][0]["data"] == t.reshape(-1).tolist()


def test_encode_v2_server_side_faults_are_internal_errors():
    with pytest.raises(InternalError):
        codecs.encode_v2("m", "1", None, {}, MATRIX, ["variable"])
    with pytest.raises(InternalError):
        codecs.encode_v2("m", "1", None, {"d": np.array([1], dtype="datetime64[s]")}, MATRIX)


# ====================================================================== MLflow: golden requests
MLFLOW_GOLDEN = [
    ("split_mixed.json", MIXED, None),
    ("split_mixed_index_extra_reordered.json", MIXED, None),
    ("records_mixed.json", MIXED, None),
    ("instances_records.json", MIXED, None),
    ("inputs_columns.json", MIXED, {"predict_method": "predict_proba"}),
    ("split_matrix.json", MATRIX, None),
    ("split_matrix_positional.json", MATRIX, None),
    ("instances_matrix_rows.json", MATRIX, None),
    ("inputs_matrix_tensor.json", MATRIX, None),
    ("mixed.csv", MIXED, None),
    ("mixed_pandas_index_quotes_na.csv", MIXED, None),
    ("mixed_empty_string_cell.csv", MIXED, None),
    ("records_missing_value.json", MIXED, None),
]


@pytest.mark.parametrize("name, io, params", MLFLOW_GOLDEN, ids=[c[0] for c in MLFLOW_GOLDEN])
def test_mlflow_golden_matches_mlflow_scoring_server_parsing(name, io, params):
    body = body_of(f"mlflow/{name}")
    content_type = "text/csv" if name.endswith(".csv") else JSON
    req = codecs.decode_mlflow(body, content_type, io)
    assert req.params == params
    expected = _mlflow_reference_feed(body, content_type, io)
    assert list(req.feed) == list(expected)
    for key, want in expected.items():
        got = req.feed[key]
        assert got.shape == want.shape, key
        if got.dtype == object:
            assert got.tolist() == want.tolist(), key
        else:
            assert got.dtype == np.float32, key
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=key)
    assert req.n_rows == 2
    assert set(req.columns) == set(io.columns)


def _mlflow_reference_feed(body: bytes, content_type: str, io: IOSpec) -> dict:
    """What ``mlflow models serve`` parses the body into, fed through the same IOSpec."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input

    if content_type == "text/csv":
        data = parse_csv_input(stdio.StringIO(body.decode("utf-8")))
    else:
        doc = json.loads(body)
        doc.pop("params", None)
        data = infer_and_parse_data(doc)
    if isinstance(data, pd.DataFrame):
        if list(data.columns) == list(range(data.shape[1])):
            return io.encode_matrix(data.to_numpy())
        return io.encode_columns({c: data[c].to_numpy() for c in io.columns}, len(data))
    if isinstance(data, dict):
        if not set(data) <= set(io.columns):  # the model's own input tensors
            return {k: np.asarray(v) for k, v in data.items()}
        return io.encode_columns(data)
    return io.encode_matrix(np.asarray(data))


def test_mlflow_booleans_in_a_float_column_are_read_as_mlflow_casts_them():
    # a boolean feature passed through to the model reaches the twin as a float input; MLflow's
    # schema enforcement casts the DataFrame's bool column to it, so JSON true/false is 1.0/0.0
    # on /invocations, alone, with numbers, or with nulls (V2 refuses them: Triton wants numbers)
    for ages, expected in (
        ([True, False], [1, 0]),
        ([True, 3], [1, 3]),
        ([False, None], [0, None]),
    ):
        rows = [[a, 1.0, 2.0, "paris"] for a in ages]
        body = orjson.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}})
        age = codecs.decode_mlflow(body, JSON, MIXED).feed["age"][:, 0]
        assert age.dtype == np.float32
        want = np.array([np.nan if e is None else e for e in expected], dtype=np.float32)
        np.testing.assert_array_equal(age, want)
    body = orjson.dumps(
        {"dataframe_records": [{"age": True, "income": 1, "température": 2, "city": "x"}]}
    )
    assert codecs.decode_mlflow(body, JSON, MIXED).feed["age"][:, 0].tolist() == [1.0]
    # CSV as pandas.to_csv writes a bool column; a column that is not all booleans is refused
    head = "age,income,température,city\n"
    csv = (head + "True,1,2,x\nFALSE,1,2,y\n").encode()
    assert codecs.decode_mlflow(csv, "text/csv", MIXED).feed["age"][:, 0].tolist() == [1, 0]
    with pytest.raises(Unprocessable, match="column 'age'"):
        codecs.decode_mlflow((head + "True,1,2,x\nabc,1,2,y\n").encode(), "text/csv", MIXED)


def test_mlflow_golden_values_and_nulls():
    req = codecs.decode_mlflow(body_of("mlflow/split_mixed.json"), JSON, MIXED)
    assert_mixed_feed(req.feed)
    assert req.columns["city"].tolist() == CITY
    # null / a missing key in a float column is NaN, as pandas reads it
    req = codecs.decode_mlflow(body_of("mlflow/records_missing_value.json"), JSON, MIXED)
    assert np.isnan(req.feed["income"][1, 0]) and np.isnan(req.feed["température"][1, 0])
    # CSV: quotes, the pandas index column, an empty float field
    req = codecs.decode_mlflow(
        body_of("mlflow/mixed_pandas_index_quotes_na.csv"), "text/csv", MIXED
    )
    assert req.feed["city"][:, 0].tolist() == ["paris, France", 'Zürich "HB"']
    assert np.isnan(req.feed["income"][1, 0])
    # where the source refuses missing values, the same bodies are a 422 naming the column
    refusing = dataclasses.replace(MIXED, accepts_missing=())
    for name, content_type in (
        ("records_missing_value.json", JSON),
        ("mixed_pandas_index_quotes_na.csv", "text/csv"),
    ):
        with pytest.raises(Unprocessable, match="'income' contains missing values") as e:
            codecs.decode_mlflow(body_of(f"mlflow/{name}"), content_type, refusing)
        assert e.value.field == "income"


#: pandas' NA tokens and look-alikes it keeps as text (case, spaces)
_CSV_CELLS = ["", "NA", "N/A", "n/a", "NULL", "null", "NaN", "nan", "-nan", "None", "<NA>", "#N/A"]
_CSV_CELLS += [" NA", "na", "none", "NONE", "Null", "N A", "nil", "-", "0", "paris"]


def test_mlflow_missing_strings_csv_cells_exactly_where_pandas_reads_nan_and_json_null():
    """An empty cell or an NA token in a string column is a missing value, as
    ``pandas.read_csv`` (MLflow's scoring server) reads it, not the category '' or 'NA'."""
    import pandas as pd

    text = "age,income,température,city\n" + "".join(f"1,2,3,{c}\n" for c in _CSV_CELLS)
    theirs = pd.read_csv(stdio.StringIO(text), dtype={"city": object})["city"]
    req = codecs.decode_mlflow(text.encode(), "text/csv", MIXED)
    ours = req.columns["city"].tolist()
    assert [v is None for v in ours] == theirs.isna().tolist()
    assert sum(v is None for v in ours) == 12
    assert [v for v in ours if v is not None] == theirs.dropna().tolist()
    # the missing value reaches the graph as the one text the gate's missing rows use
    assert set(req.feed["city"][:12, 0]) == {"None"}
    refusing = dataclasses.replace(MIXED, accepts_missing=FLOATS)
    with pytest.raises(Unprocessable, match="'city' contains missing values") as e:
        codecs.decode_mlflow(text.encode(), "text/csv", refusing)
    assert e.value.field == "city"
    # JSON null in a string column: the same missing value (MLflow answers it when its source
    # does; we used to refuse it as 'expected string, got null' whatever the source does)
    null = body_of("hostile/mlflow_null_in_string_column.json")
    assert codecs.decode_mlflow(null, JSON, MIXED).feed["city"].tolist() == [["None"]]
    with pytest.raises(Unprocessable, match="'city' contains missing values") as e:
        codecs.decode_mlflow(null, JSON, refusing)
    assert e.value.field == "city"


def test_mlflow_matrix_fast_path_and_reordered_columns():
    names = list(reversed(FEATURES))
    body = orjson.dumps({"dataframe_split": {"columns": names, "data": [F[::-1].tolist()]}})
    req = codecs.decode_mlflow(body, "application/json; charset=utf-8", MATRIX)
    np.testing.assert_array_equal(req.feed["X"], F[None])
    one_row = orjson.dumps({"instances": F.tolist()})
    np.testing.assert_array_equal(codecs.decode_mlflow(one_row, JSON, MATRIX).feed["X"], F[None])
    tensor_row = orjson.dumps({"inputs": {"X": F.tolist()}})
    np.testing.assert_array_equal(codecs.decode_mlflow(tensor_row, JSON, MATRIX).feed["X"], F[None])


def test_mlflow_deployments_client_payloads():
    """What mlflow's own clients send: dump_input_data for a DataFrame, an ndarray, a dict."""
    import pandas as pd
    from mlflow.utils.proto_json_utils import dump_input_data

    frame = pd.DataFrame({"age": AGE, "income": INCOME, "température": TEMP, "city": CITY})
    body = dump_input_data(frame, params={"predict_method": "predict_proba"}).encode()
    req = codecs.decode_mlflow(body, JSON, MIXED)
    assert_mixed_feed(req.feed)
    assert req.params == {"predict_method": "predict_proba"}
    body = dump_input_data(np.stack([F, G])).encode()
    np.testing.assert_array_equal(
        codecs.decode_mlflow(body, JSON, MATRIX).feed["X"], np.stack([F, G])
    )
    body = frame.to_json(orient="split", index=False)
    req = codecs.decode_mlflow(orjson.dumps({"dataframe_split": json.loads(body)}), JSON, MIXED)
    assert_mixed_feed(req.feed)


# ====================================================================== MLflow: hostile corpus
HOSTILE_MLFLOW = [
    # file, content type, error class, field, words the message must contain
    ("mlflow_two_formats.json", JSON, BadRequest, None, "exactly one of the input fields"),
    ("mlflow_no_format.json", JSON, BadRequest, None, "exactly one of the input fields"),
    ("mlflow_list_body.json", JSON, BadRequest, None, "Received a list"),
    ("mlflow_missing_column.json", JSON, Unprocessable, "température", "missing inputs"),
    ("mlflow_string_in_numeric.json", JSON, Unprocessable, "income", "expected float32"),
    ("mlflow_number_in_string_column.json", JSON, Unprocessable, "city", "expected string"),
    ("mlflow_unicode_column_bad_value.json", JSON, Unprocessable, "température", '"hot"'),
    ("mlflow_empty_split.json", JSON, Unprocessable, None, "no rows"),
    ("mlflow_empty_records.json", JSON, Unprocessable, None, "no rows"),
    ("mlflow_ragged_rows.json", JSON, Unprocessable, None, "Row 1 has 3 values"),
    ("mlflow_records_not_list.json", JSON, BadRequest, None, "list of records"),
    ("mlflow_split_not_dict.json", JSON, BadRequest, None, "must be a dictionary"),
    ("mlflow_split_extra_key.json", JSON, BadRequest, None, "'data' field"),
    ("mlflow_params_not_dict.json", JSON, BadRequest, "params", "'params'"),
    ("mlflow_nested_value.json", JSON, Unprocessable, "age", "[1,2]"),
    ("mlflow_truncated.json", JSON, BadRequest, None, "truncated"),
    ("empty.json", JSON, BadRequest, None, "empty"),
    ("not_utf8.json", JSON, BadRequest, None, "UTF-8"),
    ("csv_empty.csv", "text/csv", Unprocessable, None, "empty"),
    ("csv_header_only.csv", "text/csv", Unprocessable, None, "no rows"),
    ("csv_bad_number.csv", "text/csv", Unprocessable, "income", "'five' (row 1)"),
    ("csv_missing_column.csv", "text/csv", Unprocessable, "température", "missing inputs"),
    ("csv_ragged.csv", "text/csv", BadRequest, None, "row 1 has 2 fields"),
    ("csv_not_utf8.csv", "text/csv", BadRequest, None, "UTF-8"),
    ("csv_duplicate_column.csv", "text/csv", Unprocessable, "age", "more than once"),
]


@pytest.mark.parametrize(
    "name, content_type, error, field, words", HOSTILE_MLFLOW, ids=[c[0] for c in HOSTILE_MLFLOW]
)
def test_mlflow_hostile_corpus(name, content_type, error, field, words):
    with pytest.raises(ServingError) as caught:
        codecs.decode_mlflow(body_of(f"hostile/{name}"), content_type, MIXED)
    e = caught.value
    assert type(e) is error, e
    assert e.field == field
    assert words in e.message
    if field is not None:
        assert field in e.message
    assert json.loads(e.to_mlflow_body())["message"] == e.message


def test_csv_whole_numbers_written_as_floats_fill_an_integer_column():
    """pandas reads "42.0" as a float column and MLflow takes it for an int64 column (JSON's
    42.0 is taken here too); 42.5, 1e30 (beyond int64) and text are refused naming the row."""
    io = IOSpec(
        inputs=(InputBinding("age", ("age",), "int64", (None, 1)),),
        outputs=(OutputSpec("variable", "float32", VALUE, (None,)),),
    )
    body = b"age\n42.0\n1e3\n7\n"
    assert codecs.decode_mlflow(body, "text/csv", io).feed["age"].ravel().tolist() == [42, 1000, 7]
    for bad, shown in [
        ("42.5", "'42.5'"),
        ("1e30", "'1e30'"),
        ("9.3e18", "'9.3e18'"),
        ("x", "'x'"),
    ]:
        with pytest.raises(Unprocessable) as caught:
            codecs.decode_mlflow(f"age\n1\n{bad}\n".encode(), "text/csv", io)
        assert caught.value.field == "age" and f"got {shown} (row 1)" in caught.value.message


def test_rows_of_bare_values_are_refused_where_the_signature_names_columns():
    """MLflow's scoring server: "Model is missing inputs" for rows without column names when
    the signature names columns; a tensor signature (or a twin from before the record) takes
    them by position."""
    named = dataclasses.replace(MIXED, extra={**MIXED.extra, NAMED_COLUMNS: True})
    row = [41.5, 52000.25, 21, "paris"]
    for key in ("instances", "inputs"):
        for payload in ([row, row], row):
            with pytest.raises(Unprocessable) as caught:
                codecs.decode_mlflow(orjson.dumps({key: payload}), JSON, named)
            assert caught.value.field == key
            assert caught.value.message.startswith("Model is missing inputs ['age'")
        records = {key: [dict(zip(MIXED.columns, row, strict=True))]}
        assert codecs.decode_mlflow(orjson.dumps(records), JSON, named).n_rows == 1
        assert codecs.decode_mlflow(orjson.dumps({key: [row]}), JSON, MIXED).n_rows == 1
    rows = {"instances": [F.tolist(), G.tolist()]}
    assert codecs.decode_mlflow(orjson.dumps(rows), JSON, MATRIX).n_rows == 2


def test_mlflow_reads_nan_and_infinity_tokens_as_its_scoring_server_does():
    """MLflow's scoring server parses with Python's json: NaN is a missing value (answered where
    the source accepts them), an infinite value is refused where the source refuses them."""
    body = body_of("hostile/mlflow_nan.json")  # NaN in 'age'
    decoded = codecs.decode_mlflow(body, JSON, MIXED)  # MIXED's source accepts missing values
    assert np.isnan(decoded.feed["age"]).all()
    refusing = dataclasses.replace(MIXED, accepts_missing=())
    with pytest.raises(Unprocessable) as caught:
        codecs.decode_mlflow(body, JSON, refusing)
    assert caught.value.field == "age" and "missing values" in caught.value.message
    for token in ("Infinity", "-Infinity", "1e39"):  # 1e39 is beyond float32: inf in 'age'
        infinite = body.replace(b"NaN", token.encode())
        with pytest.raises(Unprocessable) as caught:
            codecs.decode_mlflow(infinite, JSON, MIXED)
        assert caught.value.field == "age" and "infinite value" in caught.value.message
        accepting = dataclasses.replace(MIXED, accepts_infinite=True)
        assert np.isinf(codecs.decode_mlflow(infinite, JSON, accepting).feed["age"]).all()
    # a large finite value whose square overflows is no infinite value
    assert codecs.decode_mlflow(body.replace(b"NaN", b"1e30"), JSON, MIXED).feed["age"][0] > 0


@pytest.mark.parametrize(
    "content_type, words",
    [
        ("text/plain", "application/json or text/csv"),
        (None, "application/json or text/csv"),
        ("application/vnd.apache.parquet", "application/json or text/csv"),
        ("application/json; charset=latin-1", "UTF-8"),
        ("application/json; format=pandas-split", "format"),
    ],
)
def test_mlflow_content_types(content_type, words):
    with pytest.raises(UnsupportedMediaType, match=words) as e:
        codecs.decode_mlflow(body_of("mlflow/split_mixed.json"), content_type, MIXED)
    assert e.value.status == 415


def test_mlflow_csv_header_parameter_is_accepted():
    req = codecs.decode_mlflow(body_of("mlflow/mixed.csv"), "text/csv; header=present", MIXED)
    assert_mixed_feed(req.feed)


def test_mlflow_max_elements():
    with pytest.raises(PayloadTooLarge):
        codecs.decode_mlflow(body_of("mlflow/split_mixed.json"), JSON, MIXED, max_elements=7)
    with pytest.raises(PayloadTooLarge):
        codecs.decode_mlflow(body_of("mlflow/mixed.csv"), "text/csv", MIXED, max_elements=7)


def test_mlflow_integer_and_bool_columns():
    io = IOSpec(
        inputs=(
            InputBinding("n", ("n",), "int64", (None, 1)),
            InputBinding("ok", ("ok",), "bool", (None, 1)),
        ),
        outputs=(OutputSpec("y", "float32"),),
    )
    req = codecs.decode_mlflow(b'{"dataframe_records": [{"n": 3, "ok": true}]}', JSON, io)
    assert req.feed["n"].dtype == np.int64 and req.feed["ok"].dtype == np.bool_
    with pytest.raises(Unprocessable, match="expected int64") as e:
        codecs.decode_mlflow(b'{"dataframe_records": [{"n": 3.5, "ok": true}]}', JSON, io)
    assert e.value.field == "n"
    with pytest.raises(Unprocessable, match="null") as e:
        codecs.decode_mlflow(b'{"dataframe_records": [{"n": null, "ok": true}]}', JSON, io)
    assert e.value.field == "n"
    req = codecs.decode_mlflow(b"n,ok\n3,TRUE\n4,false\n", "text/csv", io)
    assert req.feed["ok"][:, 0].tolist() == [True, False]
    with pytest.raises(Unprocessable, match="a missing value") as e:
        codecs.decode_mlflow(b"n,ok\n,true\n", "text/csv", io)
    assert e.value.field == "n"
    with pytest.raises(Unprocessable, match="expected bool") as e:
        codecs.decode_mlflow(b"n,ok\n1,maybe\n", "text/csv", io)
    assert e.value.field == "ok"


# ====================================================================== roles and /invocations output
def test_role_for_mirrors_the_pyfunc_flavor():
    assert codecs.role_for(MIXED, None) == LABEL
    assert codecs.role_for(MIXED, "predict") == LABEL
    assert codecs.role_for(MIXED, "predict_proba") == PROBABILITIES
    # one table of predict_method values for the pyfunc and /invocations (IOSpec.role_for)
    assert codecs.role_for(MIXED, "predict_label") == LABEL == MIXED.role_for("predict_label")
    assert codecs.role_for(MATRIX, None) == VALUE
    with pytest.raises(BadRequest, match="predict_method must be one of") as e:
        codecs.role_for(MIXED, "transform")
    assert e.value.field == "predict_method"
    with pytest.raises(BadRequest, match="no 'probabilities' output"):
        codecs.role_for(MATRIX, "predict_proba")
    with pytest.raises(BadRequest):
        codecs.role_for(MIXED, ["predict"])


def test_mlflow_prediction_shapes_like_the_flavor():
    outputs = {
        "label": np.array([[1], [0]], dtype=np.int64),
        "probabilities": np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32),
    }
    assert codecs.mlflow_prediction(MIXED, LABEL, outputs).shape == (2,)
    assert codecs.mlflow_prediction(MIXED, PROBABILITIES, outputs).shape == (2, 2)
    io = IOSpec(
        inputs=MIXED.inputs,
        outputs=MIXED.outputs,
        task="classification",
        classes=(False, True),
        default_role=LABEL,
        extra={"proba_column": 1},
    )
    assert codecs.mlflow_prediction(io, LABEL, outputs).tolist() == [True, False]
    np.testing.assert_array_equal(
        codecs.mlflow_prediction(io, PROBABILITIES, outputs), np.float32([0.8, 0.4])
    )


@pytest.mark.parametrize(
    "prediction",
    [
        np.array([1, 0, 1], dtype=np.int64),
        np.array([0.5, 1.25], dtype=np.float64),
        np.array([[0.25, 0.75], [0.875, 0.125]], dtype=np.float32),
        np.array([True, False]),
        np.array(["yes", "nön"], dtype=object),
        np.array([[0.1, 0.7]], dtype=np.float32),  # float32 digits differ, values do not
    ],
)
def test_encode_mlflow_matches_mlflow_models_serve(prediction):
    from mlflow.pyfunc.scoring_server import predictions_to_json

    theirs = stdio.StringIO()
    predictions_to_json(prediction, theirs)
    ours = json.loads(codecs.encode_mlflow(prediction))
    expected = json.loads(theirs.getvalue())
    assert list(ours) == ["predictions"]
    if prediction.dtype == np.float32:
        np.testing.assert_array_equal(
            np.asarray(ours["predictions"], np.float32),
            np.asarray(expected["predictions"], np.float32),
        )
    else:
        assert ours == expected


# ====================================================================== the error map
def test_error_statuses_and_bodies():
    statuses = {
        BadRequest: 400,
        Unauthorized: 401,
        NotFound: 404,
        MethodNotAllowed: 405,
        PayloadTooLarge: 413,
        UnsupportedMediaType: 415,
        Unprocessable: 422,
        NotReady: 503,
        InternalError: 500,
    }
    for cls, status in statuses.items():
        assert cls.status == status and issubclass(cls, ServingError)
    e = Unprocessable("Column 'âge' must be float32", field="âge")
    assert orjson.loads(e.to_body()) == {"error": "Column 'âge' must be float32", "field": "âge"}
    assert orjson.loads(BadRequest("bad").to_body()) == {"error": "bad"}
    assert orjson.loads(e.to_mlflow_body())["error_code"] == "INVALID_PARAMETER_VALUE"
    assert str(e) == e.message
    assert MethodNotAllowed("no", allowed=("GET", "HEAD")).headers == [("Allow", "GET, HEAD")]
    assert Unauthorized().headers == [("WWW-Authenticate", "Bearer")]
    long = BadRequest("x" * 5000)
    assert len(long.message) <= 1000


def test_from_schema_error_keeps_the_field():
    e = from_schema_error(SchemaError("Column 'city' must be 1-D", field="city"))
    assert isinstance(e, Unprocessable) and e.status == 422 and e.field == "city"
    assert e.message == "Column 'city' must be 1-D"


def test_codecs_import_neither_mlflow_nor_pandas():
    code = (
        "import sys, mlflow_deploy_plugins.serving.codecs, mlflow_deploy_plugins.serving.errors;"
        "bad = [m for m in ('mlflow', 'pandas', 'pyarrow', 'sklearn') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# ====================================================================== robustness
def _mutations(body: bytes, rng: np.random.Generator, n: int):
    for cut in sorted(set(rng.integers(0, len(body), n).tolist())):
        yield body[:cut]
    tokens = [b"null", b"[]", b"{}", b'"x"', b"-1", b"1e308", b"true", b"[[[[1]]]]", b"\xff", b","]
    for _ in range(n):
        i = int(rng.integers(0, len(body)))
        j = min(len(body), i + int(rng.integers(1, 8)))
        yield body[:i] + tokens[int(rng.integers(len(tokens)))] + body[j:]


GOLDEN = [
    *[(f"v2/{p.name}", "v2") for p in sorted((DATA / "v2").iterdir())],
    *[(f"mlflow/{p.name}", "mlflow") for p in sorted((DATA / "mlflow").iterdir())],
]


# 1e308 into a float32 input is inf, as numpy's cast makes it (and warns); checking every cast
# for overflow would cost ~1.7 us a request.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name, protocol", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_mutated_bodies_only_ever_raise_client_errors(name, protocol):
    """Truncated and corrupted variants of every golden body: a 4xx or a valid request."""
    rng = np.random.default_rng(sum(name.encode()))
    body = body_of(name)
    io = MIXED if "mixed" in name or "records" in name or "columns" in name else MATRIX
    content_type = "text/csv" if name.endswith(".csv") else JSON
    for mutated in _mutations(body, rng, 150):
        try:
            if protocol == "v2":
                codecs.decode_v2(mutated, {}, io)
            else:
                codecs.decode_mlflow(mutated, content_type, io)
        except ServingError as e:
            assert 400 <= e.status < 500, (mutated, e)


# ====================================================================== V2: per-column fast path
MATRIX64 = IOSpec(
    inputs=(InputBinding("X", FEATURES, "float64", (None, 20)),),
    outputs=(OutputSpec("variable", "float64", VALUE, (None,)),),
)


def _v2_general(doc: dict, io: IOSpec):
    """The general path alone: ``v2_inputs`` + ``bind_v2`` (what the fast path must equal)."""
    plan = plan_for(io)
    return bind_v2(v2_inputs(doc["inputs"], None, 1 << 24), plan)


def _outcome(call):
    try:
        feed, n_rows, columns = call()
    except ServingError as e:
        return type(e), e.field, str(e)
    return feed, n_rows, columns


def _random_value(rng, kind: str):
    choices = {
        "float": lambda: float(rng.normal()),
        "int": lambda: int(rng.integers(-1000, 1000)),
        "big": lambda: int(rng.choice([2**53 + 1, 2**63 + 5, -(2**62) - 1])),
        "bool": lambda: bool(rng.integers(2)),
        "null": lambda: None,
        "text": lambda: "abc",
        "nested": lambda: [float(rng.normal())],
    }
    return choices[kind]()


@pytest.mark.parametrize("io", [MATRIX, MATRIX64, MIXED], ids=["f32", "f64", "mixed"])
def test_v2_per_column_fast_path_equals_general_path(io: IOSpec):
    rng = np.random.default_rng(7)
    columns, dtypes = io.columns, io.column_dtypes()
    kinds = ["float"] * 12 + ["int"] * 4 + ["big", "bool", "null", "text", "nested"]
    for trial in range(400):
        n = int(rng.integers(0, 4)) if trial % 10 == 0 else int(rng.integers(1, 4))
        inputs = []
        for c in columns:
            if dtypes[c] == "string":
                pool = ["paris", "Zürich", "a\x00", 3, None] if trial % 3 == 0 else ["x", "y"]
                data = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
                datatype = "BYTES" if trial % 17 else "FP32"
            else:
                noisy = trial % 4 == 0
                data = [
                    _random_value(rng, kinds[int(rng.integers(len(kinds)))] if noisy else "float")
                    for _ in range(n)
                ]
                datatype = ["FP64", "FP32", "FP16", "INT64", "BOOL"][int(rng.integers(5))]
                datatype = datatype if trial % 5 == 0 else "FP64"
            shape = [[n], [n, 1], [n, 2], [n + 1], [True] * (n == 1) or [n], [float(n)]][
                int(rng.integers(6)) if trial % 7 == 0 else int(rng.integers(2))
            ]
            inputs.append({"name": c, "shape": shape, "datatype": datatype, "data": data})
        if trial % 11 == 0:
            rng.shuffle(inputs)
        if trial % 13 == 0:
            inputs.pop()
        if trial % 19 == 0:
            inputs.append(dict(inputs[0]))
        doc = {"inputs": inputs}
        fast = _outcome(lambda doc=doc: _fast_or_none(doc, io))
        general = _outcome(lambda doc=doc: _v2_general(doc, io))
        if isinstance(general[0], type):
            assert fast == general, doc
            continue
        feed, n_rows, _ = fast
        assert n_rows == general[1] and list(feed) == list(general[0]), doc
        for name, arr in general[0].items():
            got = feed[name]
            assert got.dtype == arr.dtype and got.shape == arr.shape, (doc, name)
            assert got.flags.c_contiguous, (doc, name)
            assert got.tolist() == arr.tolist(), (doc, name)
        req = v2(doc, io)
        expected = general[2] if general[2] is not None else codecs.columns_from_feed(io, feed)
        assert list(req.columns) == list(expected), doc
        for c, values in expected.items():
            assert req.columns[c].tolist() == values.tolist(), (doc, c)


def _fast_or_none(doc: dict, io: IOSpec):
    """decode_v2's feed; also checks whether the fast path took it (it must, for plain bodies)."""
    req = v2(doc, io)
    return req.feed, req.n_rows, None


def test_v2_per_column_plain_bodies_take_the_fast_path():
    rows = [[0.5 * i + j for i in range(20)] for j in range(3)]
    doc = {
        "inputs": [
            {"name": c, "shape": [3], "datatype": "FP64", "data": [r[i] for r in rows]}
            for i, c in enumerate(FEATURES)
        ]
    }
    fast = v2_columns_fast(doc["inputs"], plan_for(MATRIX), 1 << 24)
    assert fast is not None
    np.testing.assert_array_equal(fast[0]["X"], np.array(rows, dtype=np.float32))
    mixed = orjson.loads(body_of("v2/mixed_columns.json"))["inputs"]
    plain = [{k: i[k] for k in ("name", "shape", "datatype", "data")} for i in mixed]
    plain[2]["datatype"] = "FP64"  # INT64 data for a float column takes the general path
    assert v2_columns_fast(plain, plan_for(MIXED), 1 << 24) is not None


def test_encode_columns_single_columns_and_strings_match_the_general_rules():
    io = MIXED
    data = {
        "age": np.array([1.0, 2.0]),
        "income": np.array([[3], [4]]),
        "température": np.arange(6.0)[::3],  # a strided view
        "city": np.array(["a", "b\x00"], dtype=object),
    }
    feed = io.encode_columns(data, 2)
    assert feed["age"].shape == (2, 1) and feed["age"].dtype == np.float32
    assert feed["income"][:, 0].tolist() == [3.0, 4.0]
    assert feed["température"].flags.c_contiguous and feed["température"][:, 0].tolist() == [0, 3]
    # kept as sent (numpy's str dtype would drop the NUL: the source sees "b\x00", not "b")
    assert feed["city"][:, 0].tolist() == ["a", "b\x00"]
    feed = io.encode_columns({**data, "city": np.array(["x", "y"], dtype=object)}, 2)
    assert feed["city"].dtype == object and feed["city"][:, 0].tolist() == ["x", "y"]
    feed = io.encode_columns({**data, "city": np.array([1, None], dtype=object)}, 2)
    assert feed["city"][:, 0].tolist() == ["1", "None"]


# ====================================================================== refusals the plan knows of
def test_plan_knows_beforehand_what_the_decoders_must_refuse():
    """No per-request work for a model that accepts missing values and has no categories."""
    assert not plan_for(MIXED).refuses_missing and not plan_for(MIXED).refuses_unseen
    assert plan_for(MATRIX).refuses_missing and not plan_for(MATRIX).refuses_unseen
    lightgbm_like = dataclasses.replace(
        MIXED, extra={"categories": {"city": ["paris"]}, "unseen_categories": "missing"}
    )
    assert not plan_for(lightgbm_like).refuses_unseen


def test_unseen_category_is_refused_on_every_format_naming_column_and_value():
    xgboost_like = dataclasses.replace(
        MIXED, extra={"categories": {"city": ["paris", "Zürich"]}, "unseen_categories": "refuse"}
    )
    assert plan_for(xgboost_like).refuses_unseen
    split = {"dataframe_split": {"columns": COLUMNS, "data": [[1, 2, 3, "paris"], [1, 2, 3, "x"]]}}
    records = {"dataframe_records": [dict(zip(COLUMNS, [1, 2, 3, "Lyon"], strict=True))]}
    v2_body = {
        "inputs": [
            *({"name": c, "datatype": "FP32", "shape": [1], "data": [1]} for c in FLOATS),
            {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["Oslo"]},
        ]
    }
    cases = [
        (lambda: codecs.decode_mlflow(orjson.dumps(split), JSON, xgboost_like), "x"),
        (lambda: codecs.decode_mlflow(orjson.dumps(records), JSON, xgboost_like), "Lyon"),
        (
            lambda: codecs.decode_mlflow(
                "age,income,température,city\n1,2,3,Köln\n".encode(), "text/csv", xgboost_like
            ),
            "Köln",
        ),
        (lambda: v2(v2_body, xgboost_like), "Oslo"),
    ]
    for decode, value in cases:
        with pytest.raises(Unprocessable, match=f"Column 'city' holds the category '{value}'") as e:
            decode()
        assert e.value.field == "city"
    # known categories pass; the same spec without the record answers them all
    assert codecs.decode_mlflow(orjson.dumps(split), JSON, MIXED).n_rows == 2
    split["dataframe_split"]["data"][1][3] = "Zürich"
    assert codecs.decode_mlflow(orjson.dumps(split), JSON, xgboost_like).n_rows == 2
