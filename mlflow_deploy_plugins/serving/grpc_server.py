"""The Open Inference Protocol over gRPC (``--grpc-port``): a front end of the same dataplane.

A ``ModelInfer`` request becomes the V2 request document the REST route decodes (typed
``contents`` as ``data``; ``raw_input_contents`` as the binary extension's parts, which have the
same layout), so decoding, validation and error messages are the REST ones; it is queued on the
same batcher, logged to the same payload log and counted in the same metrics (route label
``grpc:<method>``, status the HTTP status of the same outcome). The bearer token is the
``authorization`` metadata. Outputs go back as ``raw_output_contents`` (what tritonclient reads).

Runs on the worker's event loop (``grpc.aio``); ``grpcio`` is the ``grpc`` extra, imported only
when a gRPC port is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mlflow_deploy_plugins import __version__
from mlflow_deploy_plugins.serving import codecs
from mlflow_deploy_plugins.serving.codecs.v2_binary import pack_binary
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    InternalError,
    NotFound,
    NotReady,
    ServingError,
    Unauthorized,
    model_error,
)
from mlflow_deploy_plugins.serving.grpc_schema import MESSAGES, METHODS, PACKAGE, SERVICE

_logger = logging.getLogger(__name__)

#: Typed ``contents`` field of each V2 datatype (FP16 and BF16 only travel raw).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_OPEN = frozenset({"ServerLive", "ServerReady", "ModelReady"})


def status_code(status: int):
    """The gRPC status of an HTTP status (the mapping KServe and Triton use)."""
    import grpc

    return {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        404: grpc.StatusCode.NOT_FOUND,
        408: grpc.StatusCode.DEADLINE_EXCEEDED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        415: grpc.StatusCode.INVALID_ARGUMENT,
        422: grpc.StatusCode.INVALID_ARGUMENT,
        503: grpc.StatusCode.UNAVAILABLE,
    }.get(status, grpc.StatusCode.INTERNAL)


def _parameter(value) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def request_document(request) -> tuple[dict, memoryview | None]:
    """``(V2 request document, binary part)`` of a ``ModelInferRequest``.

    Raises:
        BadRequest: raw and typed contents mixed, raw contents for fewer or more inputs than
            the request has, BYTES that are not UTF-8, contents of a datatype with no typed
            field.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "give one per input, in the order of 'inputs'",
            field="raw_input_contents",
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        params = {k: _parameter(v) for k, v in tensor.parameters.items()}
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"Input '{tensor.name}' has typed contents although raw_input_contents is "
                    "used: use one or the other for every input",
                    field=tensor.name,
                )
            params["binary_data_size"] = len(raw[i])
        else:
            item["data"] = _typed_data(tensor)
        if params:
            item["parameters"] = params
        inputs.append(item)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    parameters = {k: _parameter(v) for k, v in request.parameters.items()}
    if parameters:
        doc["parameters"] = parameters
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, **({"parameters": p} if (p := dict(_params(o))) else {})}
            for o in request.outputs
        ]
    return doc, (memoryview(b"".join(raw)) if raw else None)


def _params(output):
    for key, value in output.parameters.items():
        if key not in ("binary_data", "binary_data_output"):  # always raw over gRPC
            yield key, _parameter(value)


def _typed_data(tensor) -> list:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise BadRequest(
            f"Input '{tensor.name}' of datatype {tensor.datatype} must be sent in "
            "raw_input_contents (it has no typed contents field)",
            field=tensor.name,
        )
    values = getattr(tensor.contents, field)
    if field != "bytes_contents":
        return list(values)
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError as e:
        message = f"Input '{tensor.name}': BYTES must be UTF-8 ({e})"
        raise BadRequest(message, field=tensor.name) from e


class InferenceServicer:
    """The six RPCs of ``inference.GRPCInferenceService`` for one :class:`ServingApp`."""

    def __init__(self, app):
        self.app = app
        self._max_elements = max(1, app.settings.max_body_bytes // 2)
        meta = codecs.model_metadata(app.name, app.version, app.io)
        self._model_metadata = MESSAGES["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                getattr(self._model_metadata, kind).add(**tensor)

    # --- the RPCs ------------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return MESSAGES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return MESSAGES["ServerReadyResponse"](ready=self._ready())

    async def ModelReady(self, request, context):
        # Open, like HTTP's model ready: without the token any name gets the server's
        # readiness, so a guessed name learns nothing (app._model_ready_response).
        known = request.name == self.app.name and request.version in ("", self.app.version)
        if not known and not self.app.token_matches(_authorization(context)):
            known = True
        return MESSAGES["ModelReadyResponse"](ready=known and self._ready())

    async def ServerMetadata(self, request, context):
        from mlflow_deploy_plugins.serving.app import SERVER_NAME

        return MESSAGES["ServerMetadataResponse"](
            name=SERVER_NAME, version=__version__, extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(self, request, context):
        self._check_model(request.name, request.version)
        return self._model_metadata

    async def ModelInfer(self, request, context):
        self._check_model(request.model_name, request.model_version)
        if not self._ready():
            raise NotReady("The model is not ready (starting, shutting down or unready)")
        doc, binary = request_document(request)
        decoded = codecs.decode_v2_document(  # typed contents hold no JSON booleans
            doc, self.app.io, binary, max_elements=self._max_elements, bools=False
        )
        outputs = await self._run(decoded)
        named = {
            spec.name: self.app.io.shaped(spec, out)
            for spec, out in zip(self.app.io.outputs, outputs, strict=True)
        }
        response = MESSAGES["ModelInferResponse"](
            model_name=self.app.name, model_version=self.app.version, id=decoded.id or ""
        )
        for name, datatype, arr in codecs.response_outputs(
            named, self.app.io, decoded.requested_outputs
        ):
            response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
            response.raw_output_contents.append(pack_binary(arr, datatype))
        if self.app.payload_log is not None:
            self.app.payload_log.submit(decoded.id or "grpc", decoded.columns, named)
        return response

    # --- shared ----------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.app.ready and self.app.unready_reason is None

    def _check_model(self, name: str, version: str) -> None:
        if name != self.app.name:
            raise NotFound(
                f"Unknown model '{name}': this server serves '{self.app.name}'", field="model"
            )
        if version not in ("", self.app.version):
            raise NotFound(
                f"Unknown version '{version}' of model '{name}': this server serves version "
                f"'{self.app.version}'",
                field="model",
            )

    async def _run(self, decoded):
        """The outputs of ``decoded`` from the shared batcher."""
        future = asyncio.get_running_loop().create_future()

        def done(outputs, error):
            if not future.done():
                if error is None:
                    future.set_result(outputs)
                else:
                    future.set_exception(error)

        self.app.batcher.submit(decoded.feed, decoded.n_rows, done)
        try:
            return await future
        except ServingError:
            raise
        except Exception as e:
            raise model_error(e) from e


def _authorization(context) -> str | None:
    return dict(context.invocation_metadata() or ()).get("authorization")


def _handler(servicer: InferenceServicer, app, rpc: str):
    """The RPC ``rpc`` with auth, metrics, the error map and the access log around it."""
    import grpc

    call = getattr(servicer, rpc)
    route = f"grpc:/{PACKAGE}.{SERVICE}/{rpc}"
    counted: dict[int, object] = {}  # status -> requests_total child (labels() once each)
    duration = app.metrics.request_duration_seconds.labels(route)
    open_rpc = rpc in _OPEN

    async def handle(request, context):
        started = time.perf_counter()
        status = 200
        try:
            if not open_rpc and not app.token_matches(_authorization(context)):
                raise Unauthorized(
                    "Missing or wrong bearer token (send the metadata "
                    "'authorization: Bearer <token>')"
                )
            return await call(request, context)
        except ServingError as e:
            status = e.status
            await context.abort(status_code(status), e.message)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as e:  # our bug: a generic INTERNAL, the details in the log
            if isinstance(e, grpc.aio.AbortError):
                raise
            _logger.exception("gRPC %s failed", rpc)
            status = 500
            await context.abort(grpc.StatusCode.INTERNAL, InternalError("Internal error").message)
        finally:
            elapsed = time.perf_counter() - started
            counter = counted.get(status)
            if counter is None:
                counter = counted[status] = app.metrics.requests_total.labels(route, str(status))
            counter.inc()
            duration.observe(elapsed)
            app.log_access("RPC", route, status, elapsed, 0, "", context.peer())

    request_class, response_class = (MESSAGES[m] for m in METHODS[rpc])
    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request_class.FromString,
        response_serializer=response_class.SerializeToString,
    )


async def start_grpc(app, host: str, port: int, max_message_bytes: int):
    """Serve the gRPC front end of ``app`` on ``host:port`` (SO_REUSEPORT, like the HTTP port).

    Returns:
        The started ``grpc.aio`` server (``await server.stop(grace)`` stops it).

    Raises:
        ImportError: grpcio is not installed (the ``grpc`` extra).
        OSError: the port cannot be bound.
    """
    import grpc

    servicer = InferenceServicer(app)
    handlers = {rpc: _handler(servicer, app, rpc) for rpc in METHODS}
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(f"{PACKAGE}.{SERVICE}", handlers),)
    )
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC: cannot listen on {address}")
    await server.start()
    _logger.info("Serving gRPC (Open Inference Protocol) on %s", address)
    return server
