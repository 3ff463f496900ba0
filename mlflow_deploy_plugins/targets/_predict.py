"""``predict`` over HTTP for every target: MLflow's inputs (DataFrame, dict, list, array) -> a
request to /invocations or the V2 route, and the answer back."""

from __future__ import annotations

import dataclasses
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from mlflow.deployments import PredictionsResponse

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _deployments

_logger = logging.getLogger(__name__)


def request_body(
    inputs: Any, served_model: str, invocations: str = "/invocations"
) -> tuple[str, bytes]:
    """The route and JSON body for ``inputs``.

    Args:
        inputs: a pandas DataFrame, a dict (MLflow's scoring JSON, or V2 with ``inputs`` a list
            of tensors), a list of records or values, or a numpy array.
        served_model: the model name of the V2 route.
        invocations: the path of MLflow's scoring route (a shared MLServer has one per model).

    Returns:
        ``(path, body)``: V2 tensors go to ``/v2/models/{served_model}/infer``, the rest to
        ``invocations`` in MLflow's scoring format.

    Raises:
        InvalidInputError: an input type none of the protocols takes.
    """
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        document = scoring_document(inputs)
        if document is not None:
            return invocations, json.dumps(document, default=_jsonable).encode()
        split = inputs.to_json(orient="split", index=False, date_format="iso")
        return invocations, b'{"dataframe_split": ' + split.encode() + b"}"
    if isinstance(inputs, dict):
        tensors = inputs.get("inputs")
        if (
            isinstance(tensors, list)
            and tensors
            and all(isinstance(t, dict) and "datatype" in t for t in tensors)
        ):
            return f"/v2/models/{served_model}/infer", json.dumps(inputs).encode()
        return invocations, json.dumps(inputs, default=_jsonable).encode()
    if isinstance(inputs, list):
        if inputs and all(isinstance(r, dict) for r in inputs):
            return invocations, json.dumps({"dataframe_records": inputs}).encode()
        return invocations, json.dumps({"inputs": inputs}, default=_jsonable).encode()
    if hasattr(inputs, "tolist"):
        return invocations, json.dumps({"inputs": inputs.tolist()}).encode()
    raise InvalidInputError(
        f"Cannot send inputs of type {type(inputs).__name__}: pass a pandas DataFrame, a dict "
        "(MLflow scoring or V2 JSON), a list of records or a numpy array"
    )


#: The keys of MLflow's scoring JSON (``mlflow models predict`` and ``/invocations`` take it).
SCORING_KEYS = frozenset({"dataframe_split", "dataframe_records", "instances", "inputs"})


def scoring_document(frame) -> dict | None:
    """The MLflow scoring JSON a DataFrame was read from, or None.

    ``mlflow deployments predict --input-path FILE`` reads FILE with ``pandas.read_json``, so a
    scoring request (``{"dataframe_split": {"columns": [...], "data": [...]}}``, what ``mlflow
    models predict`` and ``/invocations`` take) arrives as a frame whose columns are that JSON's
    keys. Sent as a table it would be refused ("missing inputs ..., extra inputs
    ['dataframe_split']"); it is sent as the document it was.
    """
    columns = [c for c in frame.columns if isinstance(c, str)]
    if len(columns) != len(frame.columns) or not (set(columns) & SCORING_KEYS):
        return None
    if not set(columns) <= SCORING_KEYS | {"params"}:
        return None
    document = {}
    for name in columns:
        values = {k: v for k, v in frame[name].items() if not _absent(v)}
        keys = list(values)
        if keys == list(range(len(keys))):  # a JSON list read as rows 0..n-1
            document[name] = list(values.values())
        elif all(isinstance(k, str) for k in keys):
            document[name] = values
        else:
            return None
    return document


def _absent(value) -> bool:
    """A cell pandas filled in (NaN) because another key of the document had that entry."""
    return isinstance(value, float) and value != value


def predict(
    deployment: str,
    endpoint_url: str,
    inputs: Any,
    *,
    served_model: str,
    auth_token_file: str | None = None,
    timeout: float = 60,
    invocations_path: str = "/invocations",
    auth_token: str | None = None,
) -> PredictionsResponse:
    """Score ``inputs`` on a deployment's endpoint.

    Args:
        deployment: the deployment's name (for the messages).
        endpoint_url: ``http://host:port`` of the endpoint.
        inputs: see :func:`request_body`.
        served_model: the model name of the V2 route.
        auth_token_file: a file holding the bearer token, sent when given.
        timeout: seconds to wait for the answer.
        invocations_path: the path of MLflow's scoring route on the endpoint.
        auth_token: the bearer token itself (e.g. read from a Kubernetes Secret).

    Returns:
        The answer: ``{"predictions": ...}`` for MLflow inputs, the V2 response for V2 inputs.

    Raises:
        InvalidInputError: the endpoint answered 4xx (its message included).
        DeploymentError: it answered 5xx or could not be reached.
    """
    path, body = request_body(inputs, served_model, invocations_path)
    headers = {"Content-Type": "application/json"}
    if auth_token_file:
        auth_token = _deployments.read_token(auth_token_file)
    if auth_token:
        headers["Authorization"] = "Bearer " + auth_token
    request = urllib.request.Request(endpoint_url + path, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")[:2000]
        error = InvalidInputError if 400 <= e.code < 500 else _deployments.DeploymentError
        raise error(f"Deployment '{deployment}' answered {e.code}: {text}") from e
    except (urllib.error.URLError, OSError) as e:
        raise _deployments.DeploymentError(
            f"Deployment '{deployment}' at {endpoint_url} is not reachable: {e}"
        ) from e
    return PredictionsResponse(payload)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
