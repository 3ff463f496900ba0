"""The request ``predict`` sends for each kind of input (targets/_predict.py)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from mlflow_deploy_plugins.targets._predict import request_body, scoring_document

SCORING = [
    {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4.5]]}},
    {"dataframe_split": {"columns": ["a"], "data": [[1]]}, "params": {"predict_method": "x"}},
    {"dataframe_records": [{"a": 1, "b": "u"}, {"a": 3, "b": None}]},
    {"instances": [[1, 2], [3, 4]]},
    {"inputs": {"a": [1, 3], "b": [2, 4]}},
]


@pytest.mark.parametrize("document", SCORING, ids=lambda d: "+".join(d))
def test_a_scoring_json_read_by_pandas_is_sent_as_the_document_it_was(document):
    # what `mlflow deployments predict --input-path FILE` hands the plugin
    frame = pd.read_json(io.StringIO(json.dumps(document)))
    assert scoring_document(frame) == document
    path, body = request_body(frame, "m")
    assert path == "/invocations" and json.loads(body) == document


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"a": [1, 2], "b": [3, 4]}),
        pd.DataFrame({"inputs": [1, 2], "b": [3, 4]}),  # a model column that happens to be named so
        pd.DataFrame({"params": [1]}),
    ],
)
def test_an_ordinary_frame_is_sent_as_a_table(frame):
    assert scoring_document(frame) is None
    path, body = request_body(frame, "m")
    assert path == "/invocations"
    assert json.loads(body)["dataframe_split"]["columns"] == list(frame.columns)
