"""Our serving bundle inside MLServer: ``OnnxRuntime``, an ``mlserver.MLModel`` running the bundle
with onnxruntime.

Requests are decoded, bound and encoded by the serving runtime's own codecs (the same functions
``serving/app.py`` calls), so MLServer + this runtime and our own server answer the same V2 and
MLflow scoring requests the same way (``tests/mlserver/test_conformance.py`` sends one corpus to
both). This module is its own layer, beside ``serving/``: MLServer imports pandas, which the lean
runtime never does (see docs/architecture.md).

model-settings.json of a deployment (written by the ``mlserver`` target)::

    {"name": "churn", "implementation": "mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime",
     "parameters": {"uri": "./bundle", "extra": {"intra_op_threads": 1, "invocations": ...}}}

``extra`` keys: ``intra_op_threads`` (onnxruntime threads per call, default 1),
``max_elements`` (most tensor elements per request), ``max_body_bytes`` (largest decoded
``Content-Encoding`` body on the scoring route), ``offload_rows`` (requests with at least
this many rows run in a thread, off the event loop), ``invocations``: the REST paths of MLflow's
scoring route (default ``["/v2/models/<name>/invocations"]``; a one-model server adds
``/invocations``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.handlers.custom import CustomHandler, register_custom_handler
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    ResponseOutput,
)
from mlserver.utils import get_model_uri
from starlette.requests import Request
from starlette.responses import Response

from mlflow_deploy_plugins.core.constants import MLSERVER_INVOCATIONS
from mlflow_deploy_plugins.core.manifest import BundleError
from mlflow_deploy_plugins.serving import codecs
from mlflow_deploy_plugins.serving.errors import NotReady, ServingError, model_error
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)

JSON = "application/json"
#: Model name -> the instance that answers for it (the last one loaded). MLServer adds a new
#: instance's routes before loading it and keeps them when the load fails, so a route may belong
#: to an instance that never loaded: every route answers with the loaded instance of its name.
_LOADED: dict[str, OnnxRuntime] = {}
#: Requests with at least this many rows run in a thread (the runtime's default too).
DEFAULT_OFFLOAD_ROWS = 4096


class OnnxRuntime(MLModel):
    """A serving bundle (``model.onnx`` + ``bundle.json``) served by onnxruntime in MLServer.

    Every output keeps the batch as its first dimension, so MLServer's adaptive batching
    (``max_batch_size``, ``max_batch_time``) splits a batched answer back per request.
    """

    def __init__(self, settings):
        super().__init__(settings)
        extra = (settings.parameters.extra if settings.parameters else None) or {}
        self._threads = int(extra.get("intra_op_threads", 1))
        self._max_elements = int(extra.get("max_elements", codecs.DEFAULT_MAX_ELEMENTS))
        self._offload_rows = int(extra.get("offload_rows", DEFAULT_OFFLOAD_ROWS))
        self._max_body = int(extra.get("max_body_bytes", ServingSettings.max_body_bytes))
        self.served: ServedModel | None = None
        # One handler per path, made per instance: several models share one server, so each
        # needs its own path (MLServer finds handlers among the instance's attributes).
        default = [MLSERVER_INVOCATIONS.format(name=settings.name)]
        paths = extra.get("invocations", default)
        for i, path in enumerate(paths):
            handler = self._invocations_handler()
            register_custom_handler(CustomHandler(rest_path=path, rest_method="POST"), handler)
            setattr(self, f"invocations_{i}", handler)

    async def load(self) -> bool:
        """Verify the bundle (sha256 of the model file) and open the onnxruntime session.

        Raises:
            MLServerError: the bundle is missing, altered or not loadable; the message says which.
        """
        uri = await get_model_uri(self._settings)
        try:
            served = await asyncio.to_thread(ServedModel, uri, self._threads)
        except (BundleError, OSError, ValueError) as e:
            raise MLServerError(
                f"Model '{self.name}': the serving bundle at {uri} cannot be loaded: {e}", 422
            ) from e
        except Exception as e:  # onnxruntime's own load errors
            raise MLServerError(
                f"Model '{self.name}': onnxruntime cannot load {uri}: "
                f"{type(e).__name__}: {str(e)[:500]}",
                422,
            ) from e
        served.warm_up()
        self.served = served
        _LOADED[self.name] = self
        return True

    async def unload(self) -> bool:
        if _LOADED.get(self.name) is self:
            del _LOADED[self.name]
        self.served = None
        return True

    async def metadata(self) -> MetadataModelResponse:
        """The V2 metadata of our runtime (inputs, outputs, columns, classes)."""
        doc = codecs.model_metadata(self.name, self.served.version, self.served.io)
        doc["name"] = self.name
        return MetadataModelResponse.model_validate(doc)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode and bind like our runtime, run the session, encode like our runtime."""
        io = self.served.io
        try:
            decoded = codecs.decode_v2_document(
                _request_document(payload), io, max_elements=self._max_elements
            )
            outputs = await self._run(decoded)
            named = {
                spec.name: io.shaped(spec, out)
                for spec, out in zip(io.outputs, outputs, strict=True)
            }
            entries = codecs.response_outputs(named, io, decoded.requested_outputs)
        except ServingError as e:
            raise MLServerError(e.message, e.status) from None
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                ResponseOutput(
                    name=name,
                    shape=list(arr.shape),
                    datatype=datatype,
                    data=_as_list(codecs.json_data(arr, datatype)),
                )
                for name, datatype, arr in entries
            ],
        )

    async def _run(self, decoded) -> list:
        try:
            if decoded.n_rows >= self._offload_rows:
                return await asyncio.to_thread(self.served.run, decoded.feed)
            return self.served.run(decoded.feed)
        except Exception as e:
            raise model_error(e) from None

    def _invocations_handler(self):
        name = self.name

        async def invocations(request: Request) -> Response:
            """MLflow's scoring protocol (``/invocations``), answered like our runtime."""
            model = _LOADED.get(name)
            if model is None:
                error = NotReady(f"Model '{name}' is not loaded")
                return Response(error.to_mlflow_body(), error.status, media_type=JSON)
            return await model.score_mlflow(request)

        return invocations

    async def score_mlflow(self, request: Request) -> Response:
        """One MLflow scoring request (JSON or CSV, ``params.predict_method``)."""
        try:
            body = await request.body()
            coding = request.headers.get("content-encoding")
            if coding is not None:
                body = codecs.decode_body(body, coding, self._max_body)
            io = self.served.io
            decoded = codecs.decode_mlflow(
                body,
                request.headers.get("content-type"),
                io,
                max_elements=self._max_elements,
            )
            role = codecs.role_for(io, (decoded.params or {}).get("predict_method"))
            outputs = await self._run(decoded)
            named = dict(zip([o.name for o in io.outputs], outputs, strict=True))
            content = codecs.encode_mlflow(codecs.mlflow_prediction(io, role, named))
            return Response(content, 200, media_type=JSON)
        except ServingError as e:
            return Response(e.to_mlflow_body(), e.status, media_type=JSON)


def _request_document(payload: InferenceRequest) -> dict[str, Any]:
    """The request as the JSON document our decoder reads (MLServer has parsed the body)."""
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": i.name,
                "datatype": getattr(i.datatype, "value", i.datatype),
                "shape": i.shape,
                "data": i.data.root,
            }
            for i in payload.inputs
        ]
    }
    if payload.id is not None:
        doc["id"] = payload.id
    if payload.outputs is not None:
        doc["outputs"] = [
            {"name": o.name, **({"parameters": _params(o.parameters)} if o.parameters else {})}
            for o in payload.outputs
        ]
    params = _params(payload.parameters)
    if params:
        doc["parameters"] = params
    return doc


def _params(parameters) -> dict:
    """Request parameters without the ones MLServer adds itself (content type, headers)."""
    if parameters is None:
        return {}
    found = parameters.model_dump(exclude_none=True)
    found.pop("content_type", None)
    found.pop("headers", None)
    return found


def _as_list(data: Any) -> list:
    return data.tolist() if hasattr(data, "tolist") else data
