"""Open Inference Protocol V2 response encoding: each output named, typed and shaped, as JSON data
or binary tensor data."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.base import KIND_SIZE_TO_V2
from mlflow_deploy_plugins.serving.codecs.v2_binary import binary_body, pack_binary
from mlflow_deploy_plugins.serving.codecs.values import as_text
from mlflow_deploy_plugins.serving.errors import InternalError

_logger = logging.getLogger(__name__)


def encode_v2(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    io: IOSpec,
    requested_outputs: Sequence[str] | None = None,
    binary_outputs: Iterable[str] = frozenset(),
) -> tuple[bytes, list[tuple[str, str]]]:
    """A V2 inference response: each output named, typed and shaped, JSON data row-major.

    Outputs in ``binary_outputs`` go as raw little-endian bytes after the JSON header (BYTES:
    4-byte length prefix per element); then the returned headers carry
    ``Inference-Header-Content-Length`` and the response should be sent as
    ``V2_BINARY_CONTENT_TYPE``.

    Returns:
        ``(body, extra_headers)``; ``extra_headers`` is empty for a pure JSON body.
    """
    binary_outputs = frozenset(binary_outputs)
    entries, blobs = [], []
    for name, datatype, arr in response_outputs(outputs, io, requested_outputs):
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in binary_outputs:
            blob = pack_binary(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(arr, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = str(model_version)
    if request_id:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return binary_body(header, blobs)


def response_outputs(
    outputs: Mapping[str, np.ndarray],
    io: IOSpec,
    requested_outputs: Sequence[str] | None = None,
) -> list[tuple[str, str, np.ndarray]]:
    """``(name, V2 datatype, array)`` of every output a response carries, in response order
    (the requested outputs, else the IOSpec's order).

    Raises:
        InternalError: an output is missing, not a tensor, or of a dtype V2 cannot carry.
    """
    names = list(requested_outputs) if requested_outputs else _output_order(io, outputs)
    found = []
    for name in names:
        try:
            arr = outputs[name]
        except KeyError as e:
            raise InternalError(f"The model produced no output '{name}'", field=name) from e
        if not isinstance(arr, np.ndarray):
            raise InternalError(f"Output '{name}' is not a tensor", field=name)
        found.append((name, _datatype_of(arr.dtype, name), arr))
    return found


def _output_order(io: IOSpec, outputs: Mapping[str, np.ndarray]) -> list[str]:
    ordered = [o.name for o in io.outputs if o.name in outputs]
    known = set(ordered)
    return ordered + [n for n in outputs if n not in known]


def _datatype_of(dtype: np.dtype, name: str) -> str:
    if dtype.kind in "OUS":
        return "BYTES"
    datatype = KIND_SIZE_TO_V2.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise InternalError(f"Output '{name}' has dtype {dtype}, which V2 cannot carry", field=name)
    return datatype


def json_data(arr: np.ndarray, datatype: str) -> Any:
    """An output's JSON ``data``: text for BYTES, else the flat native-endian array."""
    if datatype == "BYTES":
        return [as_text(v) for v in arr.reshape(-1).tolist()]
    flat = np.ascontiguousarray(arr).reshape(-1)
    return flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))


#: IOSpec dtype -> V2 datatype in metadata (others upper-cased as they are).
_METADATA_DTYPE = {
    "float32": "FP32",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "bool": "BOOL",
    "string": "BYTES",
}


def model_metadata(name: str, version: str, io: IOSpec) -> dict:
    """The V2 model metadata document (``GET /v2/models/{name}``)."""
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": b.name,
                "datatype": _METADATA_DTYPE.get(b.dtype, b.dtype.upper()),
                "shape": [-1 if d is None else d for d in b.shape],
            }
            for b in io.inputs
        ],
        "outputs": [
            {
                "name": o.name,
                "datatype": _METADATA_DTYPE.get(o.dtype, o.dtype.upper()),
                "shape": [-1 if d is None else d for d in o.shape],
            }
            for o in io.outputs
        ],
        "parameters": {
            "columns": io.columns,
            "column_datatypes": {
                c: _METADATA_DTYPE.get(d, d) for c, d in io.column_dtypes().items()
            },
            "task": io.task,
            "classes": list(io.classes) if io.classes else None,
        },
    }
