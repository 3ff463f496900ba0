"""MLflow scoring protocol (``/invocations``) request decoding: content type, the JSON formats
(``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``) and ``params``."""

from __future__ import annotations

import logging
from typing import Any

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.base import DEFAULT_MAX_ELEMENTS, DecodedRequest, plan_for
from mlflow_deploy_plugins.serving.codecs.mlflow_csv import csv_columns
from mlflow_deploy_plugins.serving.codecs.mlflow_tables import (
    from_column_dict,
    from_records,
    from_rows,
    from_tensors,
)
from mlflow_deploy_plugins.serving.codecs.values import (
    clip,
    encode_columns,
    kind_of,
    list_len,
    loads_json_tokens,
    refuse_missing,
)
from mlflow_deploy_plugins.serving.errors import BadRequest, Unprocessable, UnsupportedMediaType

_logger = logging.getLogger(__name__)

#: MLflow scoring: the JSON keys that hold the data.
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")

_REQUIRED_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs'"
)


class MlflowRequest(DecodedRequest):
    """A decoded MLflow scoring request (``/invocations``)."""

    __slots__ = ("params",)

    def __init__(
        self,
        feed: dict,
        n_rows: int,
        io: IOSpec,
        params: dict | None = None,
        columns: dict | None = None,
    ):
        super().__init__(feed, n_rows, io, columns)
        self.params = params

    def __repr__(self) -> str:
        return (
            f"MlflowRequest(n_rows={self.n_rows}, inputs={list(self.feed)}, params={self.params})"
        )


def decode_mlflow(
    body: bytes,
    content_type: str | None,
    io: IOSpec,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> MlflowRequest:
    """Decode an MLflow scoring request (``POST /invocations``): JSON or CSV.

    JSON holds exactly one of ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``
    (records, rows, a dict of columns, or for ``inputs``/``instances`` a dict of the model's input
    tensors), and optionally ``params``. CSV has a header row. Extra columns are ignored, as MLflow
    does; ``null`` (JSON) or an NA token (CSV) in a float column is NaN, as pandas reads it.

    Raises:
        UnsupportedMediaType: neither ``application/json`` nor ``text/csv``, or not UTF-8.
        BadRequest: malformed JSON/CSV or not one of the formats above.
        Unprocessable: missing column, a value of the wrong type (message names the column and
            the expected dtype), wrong shape, no rows.
        PayloadTooLarge: more than ``max_elements`` values.
    """
    mime, header = _mime(content_type)
    if mime == "text/csv":
        columns, n_rows = csv_columns(body, io, max_elements, header=header)
        return MlflowRequest(encode_columns(io, columns, n_rows), n_rows, io, None, columns)
    doc = loads_json_tokens(body)  # as MLflow's scoring server (Python's json) reads it
    if type(doc) is not dict:
        got = "a list" if type(doc) is list else f"a {type(doc).__name__}"
        raise BadRequest(f"{_REQUIRED_FORMAT}. Received {got}.")
    keys = [k for k in MLFLOW_FORMATS if k in doc]
    if len(keys) != 1:
        raise BadRequest(f"{_REQUIRED_FORMAT}. Received dictionary with input fields: {list(doc)}")
    params = doc.get("params")
    if params is not None and type(params) is not dict:
        raise BadRequest("'params' must be a JSON object", field="params")
    plan = plan_for(io)
    payload = doc[keys[0]]
    if plan.named and keys[0] in ("instances", "inputs"):
        _refuse_unnamed_rows(keys[0], payload, plan)
    feed, n_rows, columns = mlflow_table(keys[0], payload, plan, max_elements)
    if columns is None:  # else encode_columns checked the raw values (a null is no category)
        feed = refuse_missing(plan, feed)
    return MlflowRequest(feed, n_rows, io, params, columns)


def _refuse_unnamed_rows(fmt: str, payload: Any, plan) -> None:
    """Rows of bare values for a source whose signature names its columns: MLflow's scoring
    server refuses them ("Model is missing inputs"), and taking them by position would answer a
    client whose columns are in another order with predictions for other inputs."""
    if type(payload) is not list or not payload or type(payload[0]) is dict:
        return
    raise Unprocessable(
        f"Model is missing inputs {list(plan.columns)}: '{fmt}' holds rows of values without "
        "column names, and this model's signature names its columns (MLflow's scoring server "
        "refuses them too: rows are not matched to columns by position). Send dataframe_split "
        f"with 'columns', dataframe_records, or '{fmt}' as a dict of columns",
        field=fmt,
    )


def _mime(content_type: str | None) -> tuple[str, bool]:
    """``(media type, CSV header row present)``; text/csv's ``header`` parameter is RFC 4180's
    (``present`` or ``absent``)."""
    mime, *rest = (content_type or "").split(";")
    mime = mime.strip().lower()
    if mime not in ("application/json", "text/csv"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json or text/csv, got {clip(content_type or '')!r}"
        )
    header = True
    for param in rest:
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').lower()
        if key == "charset":
            if value not in ("utf-8", "utf8"):
                raise UnsupportedMediaType(f"Only UTF-8 is supported, got charset={value}")
        elif key == "header" and mime == "text/csv":
            if value not in ("present", "absent"):
                raise UnsupportedMediaType(
                    f"text/csv's header parameter is 'present' or 'absent', got {clip(value)!r}"
                )
            header = value == "present"
        elif key:
            raise UnsupportedMediaType(
                f"Unrecognized content type parameter '{key}' (MLflow 2+ scoring protocol: "
                "the format is a key of the JSON body, e.g. 'dataframe_split')"
            )
    return mime, header


def _check_width(width: int, plan) -> None:
    if width != len(plan.columns):
        raise Unprocessable(
            f"The model takes {len(plan.columns)} columns by position; the request has {width}",
            field="columns",
        )


def mlflow_table(fmt: str, payload: Any, plan, max_elements: int):
    """One of ``MLFLOW_FORMATS``' payloads -> ``(feed, n_rows, columns or None)``; TF Serving's
    REST front end (``tfserving.py``) decodes its ``instances``/``inputs`` through it too."""
    io = plan.io
    if fmt == "dataframe_split":
        if type(payload) is not dict:
            raise BadRequest(
                f"Dataframe split format must be a dictionary. Got {kind_of(payload)}."
            )
        extra = set(payload) - {"columns", "data", "index"}
        if "data" not in payload or extra:
            raise BadRequest(
                "Dataframe split format must have 'data' field and optionally 'columns' and "
                f"'index' fields. Got {sorted(payload)}."
            )
        names, rows, index = payload.get("columns"), payload["data"], payload.get("index")
        if index is not None and (type(index) is not list or len(index) != list_len(rows)):
            raise BadRequest("dataframe_split 'index' must be a list with one entry per row")
        if names is not None and names != plan.columns:
            if type(names) is not list:
                raise BadRequest("dataframe_split 'columns' must be a list of column names")
            if plan.positional or names == list(range(len(names))):
                # A tensor-signature model (MLflow feeds it DataFrame.to_numpy(), whatever the
                # labels), or pandas' default labels 0..k-1: columns by position.
                _check_width(len(names), plan)
                names = None
            elif not all(type(n) is str for n in names):
                raise BadRequest("dataframe_split 'columns' must be strings")
        return from_rows(names, rows, plan, max_elements)
    if fmt == "dataframe_records":
        if type(payload) is not list:
            raise BadRequest(
                f"Dataframe records format must be a list of records. Got {kind_of(payload)}."
            )
        return from_records(payload, plan, max_elements)
    # instances / inputs (TF-serving style)
    if type(payload) is dict:
        if not plan.same and plan.tensor_names == payload.keys():
            return from_tensors(payload, io, max_elements)
        return from_column_dict(payload, io, max_elements)
    if type(payload) is not list:
        raise BadRequest(
            f"'{fmt}' must be a list of records, a list of rows, or a dict of columns; "
            f"got {kind_of(payload)}",
            field=fmt,
        )
    if payload and type(payload[0]) is dict:
        return from_records(payload, plan, max_elements)
    if payload and type(payload[0]) is not list:
        if len(plan.columns) == 1:
            return from_column_dict({plan.columns[0]: payload}, io, max_elements)
        if len(payload) == len(plan.columns):
            return from_rows(None, [payload], plan, max_elements)  # one row, as numpy 1-D
    return from_rows(None, payload, plan, max_elements)
