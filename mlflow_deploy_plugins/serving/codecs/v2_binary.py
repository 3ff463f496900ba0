"""The V2 binary tensor data extension, requests and responses: a JSON header, then each tensor's
raw little-endian bytes (BYTES: each element length-prefixed), the header's size in
``Inference-Header-Content-Length``."""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.base import V2_DTYPES, v2_datatype
from mlflow_deploy_plugins.serving.codecs.values import as_text, clip, show, string_array
from mlflow_deploy_plugins.serving.errors import BadRequest, PayloadTooLarge, Unprocessable

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.codecs.v2_decode import V2Input

_logger = logging.getLogger(__name__)

#: The request header giving the JSON part's size (lower-cased, as the HTTP layer keys headers).
HEADER_LENGTH = "inference-header-content-length"

#: Content type of a V2 response that carries binary tensor data (``encode_v2`` returned headers).
V2_BINARY_CONTENT_TYPE = "application/octet-stream"

#: The length prefix of each BYTES element.
_LENGTH = struct.Struct("<I")


# ---------------------------------------------------------------------------------- requests
def split_body(
    body: bytes, headers: Mapping[str, str]
) -> tuple[bytes | memoryview, memoryview | None]:
    """``(JSON part, binary part)`` of a request body; no binary part without the header.

    Raises:
        BadRequest: ``Inference-Header-Content-Length`` is not a size within the body.
    """
    length = _header_length(headers, len(body)) if headers else None
    if length is None:
        return body, None
    view = memoryview(body)  # slices without copying the tensors
    return view[:length], view[length:]


def _header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    value = headers.get(HEADER_LENGTH)
    if value is None:
        value = headers.get("Inference-Header-Content-Length")
        if value is None:
            return None
    # Digits only: int() would also take " 12 ", "+12" and "1_2"
    length = int(value) if type(value) is str and value.isascii() and value.isdigit() else -1
    if not 0 <= length <= body_length:
        raise BadRequest(
            f"Inference-Header-Content-Length must be the JSON header's size in bytes, between 0 "
            f"and the body size {body_length}; got {clip(str(value))}",
            field="Inference-Header-Content-Length",
        )
    return length


def raw_input(body: bytes, io: IOSpec, max_elements: int) -> dict:
    """A raw binary request (``Inference-Header-Content-Length: 0``: the body is one tensor's
    bytes, no JSON header) as the request document it stands for: the model's single input, its
    datatype and shape from the model metadata, the one variable dimension deduced from the size,
    every output returned as binary data (Triton's binary data extension, "Raw Binary Request").

    Raises:
        BadRequest: the model has not exactly one input, a BYTES input, more than one variable
            dimension, or a size that is not a whole number of rows.
        PayloadTooLarge: more than ``max_elements`` elements.
    """
    if len(io.inputs) != 1:
        raise BadRequest(
            f"Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(io.inputs)} inputs in the model; send a JSON inference header instead",
            field="Inference-Header-Content-Length",
        )
    binding = io.inputs[0]
    name = binding.name
    if binding.dtype == "string":
        raise BadRequest(
            f"For BYTES datatype raw input '{name}', the model must have input shape [1]; "
            "send a JSON inference header instead",
            field=name,
        )
    datatype = v2_datatype(binding.dtype)
    itemsize = V2_DTYPES[datatype].itemsize
    variable = [i for i, d in enumerate(binding.shape) if d is None]
    if len(variable) > 1:
        raise BadRequest(
            f"The shape of the raw input '{name}' can not be deduced because there are more "
            "than one variable-sized dimension",
            field=name,
        )
    fixed = 1
    for d in binding.shape:
        fixed *= d or 1
    if not body:
        raise BadRequest(f"The raw request for input '{name}' has no data", field=name)
    if len(body) % (fixed * itemsize) or (not variable and len(body) != fixed * itemsize):
        raise BadRequest(
            f"The raw input '{name}' of {datatype} with shape "
            f"{[-1 if d is None else d for d in binding.shape]} takes a multiple of "
            f"{fixed * itemsize} bytes; got {len(body)}",
            field=name,
        )
    count = len(body) // itemsize
    if count > max_elements:
        raise PayloadTooLarge(
            f"The raw input '{name}' holds {count} elements; a request may carry at most "
            f"{max_elements}",
            field=name,
        )
    shape = [count // fixed if d is None else d for d in binding.shape]
    return {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(body)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }


def binary_part(name: str, params: Any, data: Any, binary: memoryview | None, offset: int):
    """One input's share of the binary part, from its ``parameters.binary_data_size``.

    Args:
        name: The input's name (for messages).
        params: The input's ``parameters``.
        data: The input's JSON ``data`` (must be absent when it has binary data).
        binary: The request's binary part, None when it has none.
        offset: Where this input's bytes start (inputs take their bytes in order).

    Returns:
        ``(this input's bytes or None, the next input's offset)``.

    Raises:
        BadRequest: shared memory, or sizes that do not fit the binary part.
    """
    if type(params) is not dict:
        raise BadRequest(f"'parameters' of input '{name}' must be a JSON object", field=name)
    if "shared_memory_region" in params:
        raise BadRequest(f"Input '{name}': shared-memory inputs are not supported", field=name)
    size = params.get("binary_data_size")
    if size is None:
        return None, offset
    if binary is None:
        raise BadRequest(
            f"Input '{name}' has binary_data_size but the request has no "
            "Inference-Header-Content-Length header",
            field=name,
        )
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise BadRequest(
            f"Input '{name}' has binary_data_size {show(size)} but only "
            f"{len(binary) - offset} bytes of binary data remain",
            field=name,
        )
    if data is not None:
        raise BadRequest(f"Input '{name}' has both 'data' and binary data", field=name)
    return binary[offset : offset + size], offset + size


def binary_array(inp: V2Input) -> np.ndarray:
    """An input's binary data as a flat array of its datatype (zero-copy for numbers).

    Raises:
        BadRequest: truncated BYTES data.
        Unprocessable: a size that does not match the shape, or BYTES elements not UTF-8.
    """
    if inp.datatype == "BYTES":
        return _unpack_strings(inp.raw, inp.count, inp.name)
    wire = V2_DTYPES[inp.datatype]
    if len(inp.raw) != inp.count * wire.itemsize:
        raise Unprocessable(
            f"Input '{inp.name}' has binary_data_size {len(inp.raw)}, but shape {inp.shape} of "
            f"{inp.datatype} takes {inp.count * wire.itemsize} bytes",
            field=inp.name,
        )
    if inp.datatype == "BOOL":
        return np.frombuffer(inp.raw, dtype=np.uint8) != 0
    return np.frombuffer(inp.raw, dtype=wire)  # zero-copy, read-only: onnxruntime accepts it


def _unpack_strings(raw: memoryview, count: int, name: str) -> np.ndarray:
    """BYTES binary data: each element is a 4-byte little-endian length, then the bytes."""
    values, offset, end = [], 0, len(raw)
    unpack = _LENGTH.unpack_from
    while offset < end and len(values) <= count:
        if offset + 4 > end:
            raise BadRequest(f"Input '{name}': BYTES binary data is truncated", field=name)
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(f"Input '{name}': BYTES binary data is truncated", field=name)
        try:
            values.append(str(raw[offset : offset + length], "utf-8"))
        except UnicodeDecodeError as e:
            raise Unprocessable(
                f"Input '{name}': element {len(values)} is not UTF-8 text", field=name
            ) from e
        offset += length
    if offset != end or len(values) != count:
        raise Unprocessable(
            f"Input '{name}' declares {count} elements but its BYTES binary data holds "
            f"{len(values)}{' or more' if offset != end else ''}",
            field=name,
        )
    return string_array(values)


# ---------------------------------------------------------------------------------- responses
def pack_binary(arr: np.ndarray, datatype: str) -> bytes:
    """An output's binary data: little-endian values, or length-prefixed UTF-8 for BYTES."""
    if datatype == "BYTES":
        parts = []
        pack = _LENGTH.pack
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else as_text(v).encode("utf-8")
            parts += (pack(len(b)), b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=V2_DTYPES[datatype]).tobytes()


def binary_body(header: bytes, blobs: list[bytes]) -> tuple[bytes, list[tuple[str, str]]]:
    """``(body, headers)`` of a response: the JSON header alone, or followed by the outputs'
    binary data, with ``Inference-Header-Content-Length`` then."""
    if not blobs:
        return header, []
    return header + b"".join(blobs), [("Inference-Header-Content-Length", str(len(header)))]
