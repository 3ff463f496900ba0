"""TensorFlow Serving's REST API bodies (``/v1/models/...``): ``:predict`` requests in the row
(``instances``) and columnar (``inputs``) formats decoded into the dataplane's ``DecodedRequest``
through MLflow's table decoding (MLflow copied these formats from TF Serving), the
``predictions``/``outputs`` responses, the model status and metadata documents, and the
``{"error": ...}`` body with TF Serving's status codes.

TF Serving is stricter than MLflow where the formats differ: a plain list is one named input
(refused for a model with several), its rank must be the input's, object keys must be the model's
inputs or columns, and rows cannot be mixed with objects.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.base import DEFAULT_MAX_ELEMENTS, DecodedRequest, plan_for
from mlflow_deploy_plugins.serving.codecs.mlflow_decode import mlflow_table
from mlflow_deploy_plugins.serving.codecs.values import (
    as_text,
    kind_of,
    loads_json_tokens,
    refuse_missing,
    show,
)
from mlflow_deploy_plugins.serving.errors import BadRequest, ServingError, Unprocessable

_logger = logging.getLogger(__name__)

#: The one signature our models have (TF's ``kDefaultServingSignatureDefKey``).
SIGNATURE = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
#: IOSpec dtype -> TF ``DataType`` name in metadata.
TF_DTYPES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}
#: Our statuses TF Serving reports otherwise: it answers every request that does not fit the
#: model, a wrong method and an unreadable body with INVALID_ARGUMENT, i.e. 400.
_TF_STATUS = {405: 400, 415: 400, 422: 400}


class TfServingRequest(DecodedRequest):
    """A decoded ``:predict`` request; ``columnar``: sent as ``inputs`` (answered as ``outputs``)."""

    __slots__ = ("columnar",)

    def __init__(self, feed: dict, n_rows: int, io: IOSpec, columns: dict | None, columnar: bool):
        super().__init__(feed, n_rows, io, columns)
        self.columnar = columnar

    def __repr__(self) -> str:
        return f"TfServingRequest(n_rows={self.n_rows}, columnar={self.columnar})"


# ====================================================================== requests
def decode_tfserving(
    body: bytes, io: IOSpec, *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> TfServingRequest:
    """Decode a ``:predict`` body: ``{"signature_name"?, "instances" | "inputs"}``.

    ``NaN``, ``Infinity`` and ``-Infinity`` tokens are read as TF Serving reads them; string
    values may be sent as ``{"b64": ...}`` (UTF-8 text once decoded: our string inputs are text).

    Raises:
        BadRequest: not JSON, not an object, an unknown or non-string ``signature_name``, both or
            neither of ``instances``/``inputs``, a plain list for a model with several inputs,
            objects mixed with lists, an unknown input name, bad base64.
        Unprocessable: values that do not fit the model (wrong rank, shape, type, a missing
            input), named; TF Serving's front end answers these 400 too (``error_body``).
        PayloadTooLarge: more than ``max_elements`` values.
    """
    doc = loads_json_tokens(body)  # TF Serving's parser takes NaN/Infinity (kParseNanAndInfFlag)
    if type(doc) is not dict:
        raise BadRequest(
            "The body must be a JSON object with 'instances' (row format) or 'inputs' (columnar "
            f"format); got a {kind_of(doc)}"
        )
    check_signature(doc.get("signature_name"))
    if "instances" in doc and "inputs" in doc:
        raise BadRequest(
            "Not formatted correctly: expecting only one of 'inputs' (columnar format) or "
            "'instances' (row format), the request has both",
            field="instances",
        )
    plan = plan_for(io)
    if "instances" in doc:
        feed, n_rows, columns = _from_rows(doc["instances"], plan, max_elements)
    elif "inputs" in doc:
        feed, n_rows, columns = _from_columns(doc["inputs"], plan, max_elements)
    else:
        raise BadRequest(
            "Missing 'inputs' (columnar format) or 'instances' (row format) key; the request "
            f"has {sorted(doc)}"
        )
    if columns is None:  # else the table decoding checked the raw values
        feed = refuse_missing(plan, feed)
    return TfServingRequest(feed, n_rows, io, columns, "inputs" in doc)


def check_signature(name: Any) -> None:
    """``signature_name`` absent, empty or ``serving_default``: the only one our models have."""
    if name is None or name in ("", SIGNATURE):
        return
    if type(name) is not str:
        raise BadRequest(
            f"'signature_name' key must be a string value; got {show(name)}",
            field="signature_name",
        )
    raise BadRequest(
        f'Serving signature name: "{name[:100]}" not found in signature def: this model has one '
        f'signature, "{SIGNATURE}" (omit signature_name or send that one)',
        field="signature_name",
    )


def _from_rows(instances: Any, plan, max_elements: int):
    if type(instances) is not list:
        # TF Serving reads a lone value as one instance of a single input
        return _single_input(instances, "instances", plan, max_elements)
    if not instances:
        raise Unprocessable("'instances' is empty: the request has no rows", field="instances")
    if type(instances[0]) is not dict:
        for i, value in enumerate(instances):
            if type(value) is dict:
                raise BadRequest(
                    f"'instances' mixes values and objects: expecting value/list but got object "
                    f"at element {i} (the first element is a {kind_of(instances[0])})",
                    field="instances",
                )
        return _single_input(instances, "instances", plan, max_elements)
    keys: dict = {}
    for i, value in enumerate(instances):
        if type(value) is not dict:
            raise BadRequest(
                f"'instances' mixes objects and values: expecting object but got "
                f"{kind_of(value)} at element {i} (one object per instance, input name -> value)",
                field="instances",
            )
        keys.update(dict.fromkeys(value))
    if _tensor_keyed(keys, plan):
        by_input = {}
        for name in keys:
            values = [instance.get(name, _MISSING) for instance in instances]
            if _MISSING in values:
                i = values.index(_MISSING)
                raise Unprocessable(
                    f"Instance {i} lacks input '{name}': every instance names every input",
                    field=name,
                )
            by_input[name] = values
        return mlflow_table("inputs", _decode_strings(by_input, plan, False), plan, max_elements)
    _check_keys(keys, plan, "instance")
    strings = _string_names(plan)
    if strings:
        for instance in instances:
            for name in strings.intersection(instance):
                instance[name] = _cell(instance[name], name)
    return mlflow_table("instances", instances, plan, max_elements)


def _from_columns(inputs: Any, plan, max_elements: int):
    if type(inputs) is not dict:
        return _single_input(inputs, "inputs", plan, max_elements)
    if not inputs:
        raise Unprocessable("'inputs' is an empty object: the request has no inputs")
    tensors = _tensor_keyed(inputs, plan)
    if not tensors:
        _check_keys(inputs, plan, "'inputs'")
    inputs = _decode_strings(inputs, plan, columns=not tensors)
    return mlflow_table("inputs", inputs, plan, max_elements)


def _single_input(value: Any, key: str, plan, max_elements: int):
    """A plain value or (nested) list: the model's one input, whose rank it must have."""
    io = plan.io
    if len(io.inputs) != 1:
        names = [b.name for b in io.inputs]
        example = "[{...}, ...]" if key == "instances" else "{...}"
        raise BadRequest(
            f"'{key}' is a plain {kind_of(value)}, but the model has {len(names)} named inputs "
            f"{clip_names(names)}: send {example} with one key per input name",
            field=key,
        )
    binding = io.inputs[0]
    want = len(binding.shape)
    rank = _rank(value)
    # [N] and [N, 1] are interchangeable, as everywhere in the runtime
    if rank != want and not ((rank, want) in ((1, 2), (2, 1)) and len(binding.columns) == 1):
        shape = [-1 if d is None else d for d in binding.shape]
        raise Unprocessable(
            f"'{key}' has rank {rank}; input '{binding.name}' takes rank {want} (shape {shape}, "
            f"-1: any number of instances): send "
            f"{'one list of ' + str(shape[1]) + ' values per instance' if want == 2 else 'a list'}",
            field=binding.name,
        )
    if binding.dtype == "string":
        value = _b64(value, binding.name)
    # the input's columns by position: rows of them, or the one column's values
    return mlflow_table(key, [value] if rank == 0 else value, plan, max_elements)


_MISSING = object()


def _rank(value: Any) -> int:
    rank = 0
    while type(value) is list:
        rank += 1
        if not value:
            break
        value = value[0]
    return rank


def _tensor_keyed(keys, plan) -> bool:
    """Objects keyed by the graph's input names (not the table's columns); every input named."""
    if plan.same or not plan.tensor_names.issuperset(keys):
        return False
    missing = [name for name in plan.tensor_names if name not in keys]
    if missing:
        raise Unprocessable(
            f"Missing input '{missing[0]}': the model's inputs are "
            f"{clip_names(sorted(plan.tensor_names))}",
            field=missing[0],
        )
    return True


def _check_keys(keys, plan, what: str) -> None:
    if plan.positional:
        return  # a tensor-signature model takes its columns by position, whatever the keys
    known = set(plan.columns)
    unknown = [k for k in keys if k not in known]
    if unknown:
        inputs = sorted(plan.tensor_names)
        also = "" if plan.same else f" or its columns {clip_names(plan.columns)}"
        raise BadRequest(
            f"Unknown input '{str(unknown[0])[:100]}' in {what}: the model's inputs are "
            f"{clip_names(inputs)}{also}",
            field=str(unknown[0])[:100],
        )


def clip_names(names) -> str:
    names = list(names)
    return str(names) if len(names) <= 20 else f"{names[:20]} (and {len(names) - 20} more)"


def _string_names(plan) -> frozenset:
    """Inputs and columns that hold strings: the ones ``{"b64": ...}`` values may go to."""
    found = {b.name for b in plan.io.inputs if b.dtype == "string"}
    found.update(c for c, d in plan.dtypes.items() if d == "string")
    return frozenset(found)


def _decode_strings(by_name: dict, plan, columns: bool) -> dict:
    """``{"b64": ...}`` values decoded in the string inputs of ``by_name``; for table columns
    (``columns``) a one-value list (a row of a ``[-1, 1]`` input) is that value, as numbers are."""
    strings = _string_names(plan)
    if not strings.intersection(by_name):
        return by_name
    if not columns:
        return {k: _b64(v, k) if k in strings else v for k, v in by_name.items()}
    return {
        k: ([_cell(x, k) for x in v] if type(v) is list else _cell(v, k)) if k in strings else v
        for k, v in by_name.items()
    }


def _cell(value: Any, name: str) -> Any:
    """One row's value of a string column."""
    if type(value) is list and len(value) == 1:
        value = value[0]
    return _b64(value, name) if type(value) in (dict, list) else value


def _b64(value: Any, name: str) -> Any:
    """``{"b64": text}`` (TF Serving's binary value) -> the text it encodes, in nested lists."""
    if type(value) is list:
        return [_b64(v, name) if type(v) in (list, dict) else v for v in value]
    if type(value) is not dict:
        return value
    if list(value) != ["b64"] or type(value["b64"]) is not str:
        raise BadRequest(
            f'Input \'{name}\': an object as a value must be {{"b64": "<base64>"}}; got '
            f"{show(value)}",
            field=name,
        )
    try:
        raw = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(
            f"Input '{name}': {show(value['b64'])} is not valid base64 ({e})", field=name
        ) from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unprocessable(
            f"Input '{name}': the b64 value decodes to bytes that are not UTF-8 text; this "
            "model's string inputs take text",
            field=name,
        ) from e


# ====================================================================== responses
def encode_tfserving(outputs: dict[str, np.ndarray], columnar: bool) -> bytes:
    """``{"predictions": ...}`` (row format) or ``{"outputs": ...}`` (columnar) of ``outputs``
    (name -> array, in the model's output order), as TF Serving's ``MakeJsonFromTensors``: one
    output unnamed, several as one object per instance (rows) or one object of tensors
    (columnar). String outputs whose name ends in ``_bytes`` are ``{"b64": ...}``."""
    values = {name: _json_tensor(name, arr) for name, arr in outputs.items()}
    if len(values) == 1:
        data: Any = next(iter(values.values()))
    elif columnar:
        data = values
    else:  # one object per instance: each output split into its rows once, then zipped
        names = list(values)
        rows = [v if type(v) is list else list(v) for v in values.values()]
        data = [dict(zip(names, row, strict=True)) for row in zip(*rows, strict=True)]
    key = "outputs" if columnar else "predictions"
    return orjson.dumps({key: data}, option=orjson.OPT_SERIALIZE_NUMPY, default=as_text)


def _json_tensor(name: str, arr: np.ndarray):
    if arr.dtype.kind == "f" and arr.dtype.isnative:
        return np.ascontiguousarray(arr)  # orjson writes it nested, floats in shortest form
    if arr.dtype.kind in "iub":
        # Python ints: onnxruntime's int64 arrays hold numpy.longlong scalars, which orjson
        # does not take one by one (a row of several outputs indexes them)
        return arr.tolist()
    if arr.dtype.kind in "OSU" and name.endswith("_bytes"):
        flat = [{"b64": base64.b64encode(_as_bytes(v)).decode()} for v in arr.reshape(-1)]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    return arr.tolist()


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def model_status(version: str, state: str) -> dict:
    """``GetModelStatusResponse`` as TF Serving prints it (one version: the served one)."""
    return {
        "model_version_status": [
            {
                "version": version,
                "state": state,
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def model_metadata(name: str, version: str, io: IOSpec) -> dict:
    """``GetModelMetadataResponse`` with the one signature, ``serving_default``: the graph's
    inputs and outputs with TF dtypes and shapes (-1 for the batch)."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    SIGNATURE: {
                        "inputs": {
                            b.name: _tensor_info(b.name, b.dtype, b.shape) for b in io.inputs
                        },
                        "outputs": {
                            o.name: _tensor_info(o.name, o.dtype, o.shape) for o in io.outputs
                        },
                        "method_name": PREDICT_METHOD_NAME,
                        "defaults": {},
                    }
                }
            }
        },
    }


def _tensor_info(name: str, dtype: str, shape) -> dict:
    return {
        "dtype": TF_DTYPES.get(dtype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape],
            "unknown_rank": False,
        },
        "name": name,
    }


# ====================================================================== errors
def error_body(error: ServingError) -> tuple[int, bytes]:
    """``(status, {"error": message})`` as TF Serving answers: INVALID_ARGUMENT is 400, however
    our dataplane classed the mistake (see ``_TF_STATUS``)."""
    return _TF_STATUS.get(error.status, error.status), orjson.dumps({"error": error.message})
