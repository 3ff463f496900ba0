"""Conformance with MLflow's scoring server (``mlflow models serve``), side by side.

Each payload goes to our server and to MLflow's own ``scoring_server.invocations`` with the
registered source model (``served.source_pyfunc``, conftest): same verdict (success or refusal)
and, on success, the same predictions. Ported from mlflow/mlflow ``tests/pyfunc/
test_scoring_server.py``; each case names the upstream test it follows.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def clf_server(served, start_server):
    return start_server(served.clf_bundle, label="m-clf")


@pytest.fixture(scope="module")
def frame(kit):
    return kit.churn_frame(6, seed=21)


def mlflow_answer(model, body: bytes, content_type: str):
    """``(status, predictions or None)`` of MLflow's scoring server for the same request, on
    ``model`` (a source pyfunc)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        result = scoring_server.invocations(
            body, content_type, model, model.metadata.get_input_schema()
        )
    except MlflowException as e:
        return e.get_http_status_code(), None
    if result.status != 200:
        return result.status, None
    return 200, json.loads(result.response)["predictions"]


def assert_same_as(server, model, body: bytes, content_type: str = "application/json"):
    """Our server and MLflow's scoring server on ``model`` give the same verdict and, on
    success, the same predictions."""
    ours = server.post("/invocations", body, {"Content-Type": content_type})
    status, predictions = mlflow_answer(model, body, content_type)
    assert (ours.status == 200) == (status == 200), (ours.status, ours.text, status)
    if status == 200:
        assert ours.json()["predictions"] == predictions
    else:
        assert 400 <= ours.status < 500 and "Traceback" not in ours.text
    return ours


def assert_same(server, served, body: bytes, content_type: str):
    return assert_same_as(server, served.source_pyfunc, body, content_type)


def _j(doc) -> bytes:
    return json.dumps(doc).encode()


def test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_records_orientation(
    clf_server, served, frame
):
    body = _j({"dataframe_records": frame.to_dict(orient="records")})
    assert_same(clf_server, served, body, "application/json")
    assert_same(clf_server, served, body, "application/json; charset=UTF-8")


def test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_split_orientation(
    clf_server, served, frame
):
    body = _j({"dataframe_split": frame.to_dict(orient="split")})
    assert_same(clf_server, served, body, "application/json; charset=UTF-8")
    assert_same(clf_server, served, body, "application/json")


def test_scoring_server_successfully_evaluates_correct_tf_serving_sklearn(
    clf_server, served, frame
):
    body = _j({"instances": frame.to_dict(orient="records")})
    assert_same(clf_server, served, body, "application/json")


@pytest.mark.parametrize(
    "doc",
    [
        1,
        "1",
        [1],
        {"not": "a serialized dataframe"},
        {"dataframe_records": [], "dataframe_split": {"data": []}},
    ],
)
def test_scoring_server_responds_to_invalid_json_format_with_error_code_and_message(
    clf_server, served, doc
):
    reply = assert_same(clf_server, served, _j(doc), "application/json")
    assert reply.status == 400
    assert "exactly one of the input fields" in reply.json()["message"]


def test_scoring_server_responds_to_malformed_json_input_with_error_code_and_message(
    clf_server, served
):
    reply = assert_same(clf_server, served, b"this is,,,, not valid json", "application/json")
    assert reply.status == 400 and reply.json()["error_code"] == "BAD_REQUEST"


def test_scoring_server_responds_to_invalid_pandas_input_format_with_stacktrace_and_error_code(
    clf_server, served, frame
):
    wrong_split = _j({"dataframe_split": frame.to_dict(orient="records")})
    reply = assert_same(clf_server, served, wrong_split, "application/json")
    assert "Dataframe split format must be a dictionary. Got list" in reply.json()["message"]
    wrong_records = _j({"dataframe_records": frame.to_dict(orient="split")})
    reply = assert_same(clf_server, served, wrong_records, "application/json")
    assert "Dataframe records format must be a list of records" in reply.json()["message"]


def test_scoring_server_responds_to_invalid_csv_input_with_stacktrace_and_error_code(
    clf_server, served
):
    assert_same(clf_server, served, b"", "text/csv")


@pytest.mark.parametrize(
    "content_type", ["not_a_supported_content_type", "application/json; something=something"]
)
def test_scoring_server_responds_to_invalid_content_type_request(
    clf_server, served, frame, content_type
):
    # test_..._with_unsupported_content_type_code, test_..._with_unrecognized_content_param
    body = _j({"dataframe_split": frame.to_dict(orient="split")})
    reply = clf_server.post("/invocations", body, {"Content-Type": content_type})
    assert reply.status == 415 == mlflow_answer(served.source_pyfunc, body, content_type)[0]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_get_mlflows_verdict(clf_server, served, frame, token):
    # MLflow parses /invocations JSON with Python's json, which reads these tokens; the source
    # then refuses a missing or infinite 'age' (no imputer, sklearn's input validation)
    doc = json.dumps({"dataframe_split": frame.to_dict(orient="split")})
    body = doc.replace(json.dumps(float(frame.age.iloc[0])), token, 1).encode()
    assert token.encode() in body
    ours = assert_same(clf_server, served, body, "application/json")
    assert ours.status == 422 and ours.json()["field"] == "age", ours.text


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_rows_of_bare_values_are_refused_like_mlflow_for_named_columns(
    clf_server, served, frame, key
):
    # the source's signature names its columns: MLflow answers "Model is missing inputs"
    for rows in (frame.to_numpy().tolist(), frame.to_numpy().tolist()[0]):
        ours = assert_same(clf_server, served, _j({key: rows}), "application/json")
        assert "Model is missing inputs" in ours.json()["message"]


def test_csv(clf_server, served, frame):
    # test_scoring_server_successfully_evaluates_correct_dataframes_with_csv (CSV body)
    body = frame.to_csv(index=False).encode()
    assert_same(clf_server, served, body, "text/csv")


def test_utf8_bom_is_accepted_like_mlflow(clf_server, served, frame):
    # issue 10: a UTF-8 byte order mark (Windows tools write one) is read by MLflow: JSON bytes
    # go through json.loads (encoding detection), CSV through pandas
    json_body = BOM + _j({"dataframe_split": frame.to_dict(orient="split")})
    assert assert_same(clf_server, served, json_body, "application/json").status == 200
    csv_body = BOM + frame.to_csv(index=False).encode()
    assert assert_same(clf_server, served, csv_body, "text/csv").status == 200


def test_csv_header_absent(clf_server, served, frame):
    # issue 10: text/csv's header parameter (RFC 4180). MLflow refuses any parameter but charset
    # (415); we honour it: header=absent reads every row as data in the model's column order
    expected = np.asarray(served.source_pyfunc.predict(frame)).tolist()
    body = frame.to_csv(index=False, header=False).encode()
    reply = clf_server.post("/invocations", body, {"Content-Type": "text/csv; header=absent"})
    assert reply.status == 200, reply.text
    assert reply.json()["predictions"] == expected
    present = frame.to_csv(index=False).encode()
    reply = clf_server.post("/invocations", present, {"Content-Type": "text/csv; header=present"})
    assert reply.json()["predictions"] == expected
    reply = clf_server.post("/invocations", present, {"Content-Type": "text/csv; header=maybe"})
    assert reply.status == 415
    short = b"1.0,2.0\n"
    reply = clf_server.post("/invocations", short, {"Content-Type": "text/csv; header=absent"})
    assert reply.status == 400 and "columns" in reply.json()["message"]


def test_scoring_server_client_version(clf_server):
    # test_scoring_server_client: ScoringServerClient.get_version() is the body's text
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from mlflow_deploy_plugins import __version__

    assert ScoringServerClient("127.0.0.1", clf_server.port).get_version() == __version__


# --- a tensor-signature model: MLflow takes columns by position, whatever their labels --------


@pytest.fixture(scope="module")
def tensor(tmp_path_factory, start_server):
    """LogisticRegression logged with a numpy input example (a tensor signature), its bundle
    served by us, and the source pyfunc MLflow's scoring server runs."""
    import mlflow
    from helpers import register_sklearn, tracking_store
    from sklearn.linear_model import LogisticRegression

    from mlflow_deploy_plugins import build_bundle

    root = tmp_path_factory.mktemp("tensor-model")
    x = np.random.default_rng(3).normal(size=(300, 4))
    y = (x[:, 0] - 2 * x[:, 3] > 0).astype(int)
    with tracking_store(root):
        register_sklearn(LogisticRegression().fit(x, y), "tensor", x[:5])
        bundle = build_bundle("models:/tensor/1", str(root / "bundle"), sample=x)
        source = mlflow.pyfunc.load_model("models:/tensor/1")
    assert source.metadata.get_input_schema().is_tensor_spec()
    server = start_server(bundle.path, label="m-tensor")
    return server, source, np.random.default_rng(4).normal(size=(5, 4))


@pytest.mark.parametrize(
    "labels",
    [["0", "1", "2", "3"], [3, 2, 1, 0], ["a", "b", "c", "d"], [0, 1, 2, 3], None],
    ids=["str-digits", "reversed-ints", "letters", "ints", "none"],
)
def test_tensor_model_split_columns_by_position(tensor, labels):
    # Upstream: test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_split_
    # orientation, on a model logged with a numpy input example.
    server, source, x = tensor
    split = {"data": x.tolist(), **({"columns": labels} if labels is not None else {})}
    ours = assert_same_as(server, source, _j({"dataframe_split": split}))
    assert ours.status == 200


@pytest.mark.parametrize("keys", [["0", "1", "2", "3"], ["d", "c", "b", "a"]])
def test_tensor_model_records_by_key_order(tensor, keys):
    # Upstream: test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_records_
    # orientation (MLflow builds the DataFrame from the records and takes .to_numpy()).
    server, source, x = tensor
    records = [dict(zip(keys, row, strict=True)) for row in x.tolist()]
    ours = assert_same_as(server, source, _j({"dataframe_records": records}))
    assert ours.status == 200


def test_tensor_model_csv_header_labels_ignored(tensor):
    # MLflow's scoring server refuses any CSV for a tensor-signature model ("TensorSpec only
    # supports numpy types": its CSV parser asks the schema for pandas types). We answer what
    # the source predicts on the same table, taken by position as for JSON.
    import pandas as pd

    server, source, x = tensor
    text = "w,x,y,z\n" + "\n".join(",".join(repr(v) for v in row) for row in x.tolist())
    ours = server.post("/invocations", text.encode(), {"Content-Type": "text/csv"})
    assert ours.status == 200, ours.text
    expected = source.predict(pd.read_csv(io.StringIO(text)).to_numpy())
    assert ours.json()["predictions"] == expected.tolist()


@pytest.mark.parametrize("width", [3, 5])
def test_tensor_model_wrong_width_refused_by_both(tensor, width):
    server, source, x = tensor
    data = np.random.default_rng(5).normal(size=(2, width)).tolist()
    split = {"columns": [str(i) for i in range(width)], "data": data}
    ours = assert_same_as(server, source, _j({"dataframe_split": split}))
    assert ours.status == 422 and "4 columns by position" in ours.text
    records = [dict(zip("abcdefg"[:width], row, strict=True)) for row in data]
    ours = assert_same_as(server, source, _j({"dataframe_records": records}))
    assert ours.status == 422


# --- an empty CSV cell (or JSON null) in a string column is a missing value, as pandas reads it


@pytest.fixture(scope="module")
def strict_city(tmp_path_factory, start_server):
    """A source that refuses a missing city (OneHotEncoder(handle_unknown='error') raises on
    NaN) but knows its cities: its bundle served by us, and its pyfunc for MLflow's server."""
    import mlflow
    import pandas as pd
    from helpers import register_sklearn, tracking_store
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlflow_deploy_plugins import build_bundle

    root = tmp_path_factory.mktemp("strict-city")
    rng = np.random.default_rng(6)
    x = pd.DataFrame({"age": rng.normal(40, 10, 300), "city": rng.choice(["NA", "lyon"], 300)})
    y = ((x.age - 40) / 10 + (x.city == "lyon") * 1.5 > 0).astype(int)
    columns = ColumnTransformer(
        [("num", "passthrough", ["age"]), ("cat", OneHotEncoder(handle_unknown="error"), ["city"])]
    )
    model = Pipeline([("columns", columns), ("lr", LogisticRegression())]).fit(x, y)
    with tracking_store(root):
        register_sklearn(model, "strict-city", x.head(5))
        bundle = build_bundle("models:/strict-city/1", str(root / "bundle"), sample=x)
        source = mlflow.pyfunc.load_model("models:/strict-city/1")
    return start_server(bundle.path, label="m-strict-city"), source


@pytest.mark.parametrize("cell", ["", '""', "NA", "null"])
def test_missing_string_cell_refused_like_mlflow_where_the_source_refuses_it(strict_city, cell):
    # MLflow reads the cell as NaN (pandas' default NA values, also in string columns) and the
    # source refuses it; we used to send the category '' (or 'NA', a training city) and answer
    server, source = strict_city
    body = f"age,city\n41.5,lyon\n23,{cell}\n".encode()
    ours = assert_same_as(server, source, body, "text/csv")
    assert ours.status == 422 and ours.json()["field"] == "city"
    assert "'city' contains missing values" in ours.json()["message"]
    assert assert_same_as(server, source, b"age,city\n41.5,lyon\n", "text/csv").status == 200
    null = _j({"dataframe_split": {"columns": ["age", "city"], "data": [[41.5, None]]}})
    assert assert_same_as(server, source, null).json()["field"] == "city"


def test_missing_string_cell_answered_like_mlflow_where_the_source_accepts_it(
    clf_server, served, frame
):
    # the session's classifier one-hot encodes city with handle_unknown='ignore': the source
    # answers a missing city, and so do we, with the same predictions
    holes = frame.copy()
    holes.loc[holes.index[[0, 3]], "city"] = None
    body = holes.to_csv(index=False).encode()
    import pandas as pd

    assert pd.read_csv(io.BytesIO(body))["city"].isna().sum() == 2  # two empty cells
    assert assert_same(clf_server, served, body, "text/csv").status == 200
    # JSON null: the same missing value (we used to refuse it: 'expected string, got null')
    split = _j({"dataframe_split": json.loads(holes.to_json(orient="split", index=False))})
    assert b"null" in split
    assert assert_same(clf_server, served, split, "application/json").status == 200
    records = _j({"dataframe_records": json.loads(holes.to_json(orient="records"))})
    assert assert_same(clf_server, served, records, "application/json").status == 200


@pytest.mark.parametrize("cell", ["paris", "NA "])  # pandas keeps 'NA ' (a space) as text
def test_unseen_category_refused_like_mlflow_where_the_encoder_refuses_it(strict_city, cell):
    # OneHotEncoder(handle_unknown='error') raises on a city it never saw; skl2onnx's graph
    # would answer it (all zeros)
    server, source = strict_city
    ours = assert_same_as(server, source, f"age,city\n23,{cell}\n".encode(), "text/csv")
    assert ours.status == 422 and ours.json()["field"] == "city"
    split = _j({"dataframe_split": {"columns": ["age", "city"], "data": [[23, cell]]}})
    assert assert_same_as(server, source, split).json()["field"] == "city"
