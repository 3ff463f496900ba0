"""Open Inference Protocol V2 request decoding: the request document's structure, its inputs and
requested outputs; binding the inputs to the model is ``v2_bind``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from math import prod
from typing import Any

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.serving.codecs.base import (
    DEFAULT_MAX_ELEMENTS,
    V2_DTYPES,
    DecodedRequest,
    plan_for,
)
from mlflow_deploy_plugins.serving.codecs.v2_binary import binary_part, raw_input, split_body
from mlflow_deploy_plugins.serving.codecs.v2_bind import bind_v2, v2_columns_fast
from mlflow_deploy_plugins.serving.codecs.values import loads_json, refuse_missing, show
from mlflow_deploy_plugins.serving.errors import BadRequest, PayloadTooLarge, Unprocessable

_logger = logging.getLogger(__name__)

#: Most dimensions a V2 input may declare.
MAX_RANK = 16


class V2Request(DecodedRequest):
    """A decoded Open Inference Protocol V2 inference request."""

    __slots__ = ("id", "requested_outputs", "binary_outputs", "parameters")

    def __init__(
        self,
        id: str | None,
        feed: dict,
        n_rows: int,
        io: IOSpec,
        requested_outputs: list[str] | None = None,
        binary_outputs: frozenset[str] = frozenset(),
        parameters: dict | None = None,
        columns: dict | None = None,
    ):
        self.feed, self.n_rows, self._io, self._columns = feed, n_rows, io, columns
        self.id = id
        self.requested_outputs = requested_outputs
        self.binary_outputs = binary_outputs
        self.parameters = parameters or {}

    def __repr__(self) -> str:
        return f"V2Request(id={self.id!r}, n_rows={self.n_rows}, inputs={list(self.feed)})"


class V2Input:
    """One request input as sent: JSON ``data`` or binary ``raw`` bytes, not converted yet."""

    __slots__ = ("name", "datatype", "shape", "count", "data", "raw", "bools")

    def __init__(self, name, datatype, shape, count, data, raw, bools=True):
        self.name, self.datatype, self.shape, self.count = name, datatype, shape, count
        #: ``bools``: ``data`` may hold JSON booleans (see ``decode_v2_document``).
        self.data, self.raw, self.bools = data, raw, bools


def decode_v2(
    body: bytes,
    headers: Mapping[str, str],
    io: IOSpec,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> V2Request:
    """Decode a V2 inference request (JSON, or JSON header + binary tensor data).

    Inputs are either the ONNX graph's own inputs (``io.inputs`` names, shapes and datatypes), or
    one 1-D (or ``[N, 1]``) input per table column (``io.columns``), numeric datatypes converted.

    ``parameters`` honoured: the request's ``binary_data_output``, each output's ``binary_data``
    (``binary_data_output`` accepted too), each input's ``binary_data_size``. Refused:
    ``classification`` and ``shared_memory_*`` (not supported). Others are ignored, as the
    protocol allows, and returned in ``V2Request.parameters``.

    Args:
        body: The request body.
        headers: Request headers, names lower-cased (``Inference-Header-Content-Length``).
        io: The served model's IOSpec.
        max_elements: Most tensor elements accepted, over all inputs.

    Raises:
        BadRequest: not JSON, or not a V2 request (structure, binary sizes).
        Unprocessable: unknown or missing input or output, wrong datatype or shape, no rows.
        PayloadTooLarge: more than ``max_elements`` elements declared.
    """
    json_part, binary = split_body(body, headers)
    if binary is not None and not json_part:
        doc = raw_input(body, io, max_elements)
    else:
        doc = loads_json(json_part)
    # Numeric data is checked for JSON booleans value by value only when the JSON holds one
    # (the JSON part only: a binary request's tensor bytes are no JSON and may be megabytes).
    text = body if binary is None else bytes(json_part)
    bools = b"true" in text or b"false" in text
    return decode_v2_document(doc, io, binary, max_elements=max_elements, bools=bools)


def decode_v2_document(
    doc: Any,
    io: IOSpec,
    binary: memoryview | None = None,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    bools: bool = True,
) -> V2Request:
    """Decode a V2 inference request already parsed from JSON (``decode_v2`` after the body is
    split and parsed; the MLServer runtime with the request MLServer parsed): the same checks,
    the same binding, the same messages.

    Args:
        doc: the request document (``id``, ``parameters``, ``inputs``, ``outputs``).
        io: The served model's IOSpec.
        binary: the binary part of the body, when the request used the binary extension.
        max_elements: Most tensor elements accepted, over all inputs.
        bools: whether the document may hold JSON booleans. Numeric data is then checked for
            them (a ``true`` among numbers is refused, as Triton does, not read as 1.0); False
            when the body has no ``true``/``false`` token, or for gRPC's typed contents.

    Raises:
        The errors of :func:`decode_v2`.
    """
    plan = plan_for(io)
    if type(doc) is not dict:
        raise BadRequest("A V2 inference request must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise BadRequest("'id' must be a string", field="id")
    parameters = doc.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        raise BadRequest("The request's 'parameters' must be a JSON object", field="parameters")
    items = doc.get("inputs")
    fast = None
    if binary is None and plan.column_blocks is not None and type(items) is list:
        fast = v2_columns_fast(items, plan, max_elements, bools)
    if fast is None:
        inputs = v2_inputs(items, binary, max_elements, bools)
        feed, n_rows, columns = bind_v2(inputs, plan)
    else:
        feed, n_rows, columns = fast
    outputs = doc.get("outputs")
    if outputs is None and not parameters:
        requested, binary_outputs = None, frozenset()
    else:
        requested, binary_outputs = _v2_outputs(outputs, parameters, plan.outputs)
    refuse_missing(plan, feed)
    return V2Request(
        request_id, feed, n_rows, io, requested, binary_outputs, parameters, columns=columns
    )


def v2_inputs(
    inputs: Any, binary: memoryview | None, max_elements: int, bools: bool = True
) -> list[V2Input]:
    """The request's ``inputs`` checked for structure (names, datatypes, shapes, element limit,
    binary sizes), not yet against the model (``bools``: see ``decode_v2_document``).

    Raises:
        BadRequest: not a list of well-formed input objects, or inconsistent binary sizes.
        PayloadTooLarge: more than ``max_elements`` elements declared.
    """
    if type(inputs) is not list or not inputs:
        raise BadRequest(
            "A V2 inference request needs 'inputs': a non-empty list of "
            '{"name", "shape", "datatype", "data"} objects',
            field="inputs",
        )
    parsed, seen, offset, total = [], set(), 0, 0
    for i, item in enumerate(inputs):
        if type(item) is not dict:
            raise BadRequest(f"inputs[{i}] must be a JSON object", field="inputs")
        name = item.get("name")
        if type(name) is not str:
            raise BadRequest(f"inputs[{i}] needs a string 'name'", field="inputs")
        if name in seen:
            raise BadRequest(f"Input '{name}' is given more than once", field=name)
        seen.add(name)
        datatype = item.get("datatype")
        if type(datatype) is not str or datatype not in V2_DTYPES:
            raise BadRequest(
                f"Input '{name}' has datatype {show(datatype)}; V2 datatypes are "
                f"{', '.join(V2_DTYPES)}",
                field=name,
            )
        shape = item.get("shape")
        count = _count(shape)
        if count < 0:
            raise BadRequest(
                f"Input '{name}' needs 'shape': a list of at most {MAX_RANK} non-negative "
                f"integers, got {show(shape)}",
                field=name,
            )
        total += count
        if total > max_elements:
            raise PayloadTooLarge(
                f"Input '{name}' has shape {shape} ({count} elements); a request may carry at "
                f"most {max_elements} elements",
                field=name,
            )
        data, raw = item.get("data"), None
        params = item.get("parameters")
        if params is not None:
            raw, offset = binary_part(name, params, data, binary, offset)
        if raw is None and type(data) is not list:
            raise BadRequest(
                f"Input '{name}' needs 'data': a flat (row-major) or nested list, got {show(data)}",
                field=name,
            )
        parsed.append(V2Input(name, datatype, shape, count, data, raw, bools))
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"The body has {len(binary) - offset} bytes after the last input's binary data; "
            "binary_data_size values must add up to the binary part of the body",
            field="inputs",
        )
    return parsed


def _count(shape: Any) -> int:
    """Elements of a declared shape, or -1 when it is not a list of non-negative integers."""
    if type(shape) is not list or len(shape) > MAX_RANK:
        return -1
    for d in shape:
        if type(d) is not int or d < 0:
            return -1
    return prod(shape)


def _v2_outputs(outputs: Any, parameters: dict, known: list[str]) -> tuple[list | None, frozenset]:
    all_binary = _flag(parameters, "binary_data_output", "parameters")
    if outputs is None or outputs == []:  # [] overrides nothing: every output, as Triton
        return None, frozenset(known) if all_binary else frozenset()
    if type(outputs) is not list:
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects", field="outputs")
    requested, binary = [], set()
    for i, item in enumerate(outputs):
        if type(item) is not dict or type(item.get("name")) is not str:
            raise BadRequest(
                f"outputs[{i}] must be an object with a string 'name'", field="outputs"
            )
        name = item["name"]
        if name in requested:
            raise BadRequest(f"output '{name}' already exists in request", field=name)
        if name not in known:
            raise Unprocessable(
                f"Unknown output '{name}': the model's outputs are {known}", field=name
            )
        params = item.get("parameters") or {}
        if type(params) is not dict:
            raise BadRequest(f"'parameters' of output '{name}' must be a JSON object", field=name)
        if params.get("classification"):
            raise Unprocessable(
                f"Output '{name}': the 'classification' parameter is not supported", field=name
            )
        if "shared_memory_region" in params:  # Triton would write it there, not in the body
            raise BadRequest(
                f"Output '{name}': shared-memory outputs are not supported; leave out "
                "shared_memory_region to get the output in the response",
                field=name,
            )
        flag = params.get("binary_data", params.get("binary_data_output"))
        if flag is None:
            flag = all_binary
        elif type(flag) is not bool:
            raise BadRequest(f"Output '{name}': binary_data must be true or false", field=name)
        requested.append(name)
        if flag:
            binary.add(name)
    return requested, frozenset(binary)


def _flag(params: dict, key: str, field: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"'{key}' must be true or false, got {show(value)}", field=field)
    return value
