"""Routes of the serving runtime: Open Inference Protocol V2, MLflow scoring, health, metrics.

``ServingApp.handle`` is the ``http.Handler``: called on the event loop for each request, it
returns a ``Response`` at once (health, metadata, errors) or a Future the batcher resolves.
Every client mistake is a ``ServingError`` (errors.py) turned into a response here, in one place.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson

from mlflow_deploy_plugins import __version__
from mlflow_deploy_plugins.serving import codecs
from mlflow_deploy_plugins.serving.access_log import LOGGER as ACCESS_LOGGER
from mlflow_deploy_plugins.serving.access_log import AccessLog
from mlflow_deploy_plugins.serving.batching import Batcher
from mlflow_deploy_plugins.serving.codecs import tfserving
from mlflow_deploy_plugins.serving.errors import (
    MethodNotAllowed,
    NotFound,
    NotReady,
    ServingError,
    Unauthorized,
    model_error,
)
from mlflow_deploy_plugins.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.results import Pending
from mlflow_deploy_plugins.serving.settings import ServingSettings
from mlflow_deploy_plugins.serving.tfserving_routes import TfServingRoutes
from mlflow_deploy_plugins.serving.wire import Request, Response, error_response

_logger = logging.getLogger(__name__)

JSON = "application/json"
SERVER_NAME = "mlflow-deploy-plugins"
#: Paths that never need the bearer token (probes must work without secrets): KServe V2's health
#: group (server live, server ready; model ready is open too, see ``_model_ready``) and MLflow's
#: ``/ping``, ``/health``. Server and model metadata (``/v2``, ``/v2/models/{name}``) need it, like
#: Triton's "metadata" API group.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/health"})
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})


class ServingApp:
    """One served model behind every route; see docs/serving.md for the contract."""

    def __init__(
        self,
        model: ServedModel,
        settings: ServingSettings,
        metrics: ServingMetrics | None = None,
        payload_log=None,
    ):
        self.model = model
        self.io = model.io
        self.settings = settings
        self.name = settings.model_name or model.name
        self.version = model.version
        self.metrics = metrics or ServingMetrics()
        self.metrics.set_model(self.name, self.version)
        self.payload_log = payload_log
        access = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        self.access_log = AccessLog() if access else None
        #: Every request is logged (--access-log), else only those answered 4xx/5xx.
        self._log_every_request = settings.access_log
        self.batcher = Batcher(
            model.run,
            max_batch_size=settings.max_batch_size,
            max_batch_time_ms=settings.max_batch_time_ms,
            on_batch=self.metrics.batch_size.observe,
            offload_rows=settings.offload_rows,
        )
        #: The thread pool large requests run on (see open_offload); None: all on the loop.
        self.offload: ThreadPoolExecutor | None = None
        #: Bodies this large are decoded and run on ``offload`` (never, until it is open).
        self._offload_bytes = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None  # bound by open_offload
        self.ready = False
        #: Why the app is not ready although started (e.g. its payload log directory cannot be
        #: written, payload_log_unwritable=unready); None: nothing stands in the way.
        self.unready_reason: str | None = None
        #: Shutting down: readiness answers 503 so no new traffic comes, but requests already
        #: on their way (e.g. a body still arriving at SIGTERM) are answered, not refused.
        self.draining = False
        #: Requests the HTTP server holds unanswered (the in-flight gauge); server.py points it
        #: at its HttpServer once listening.
        self.in_flight: Callable[[], int] = lambda: 0
        self._token = settings.auth_token.encode() if settings.auth_token else None
        self._max_elements = max(1, settings.max_body_bytes // 2)
        self._output_names = model.output_names
        #: V2 outputs are shaped as the metadata declares them (e.g. a regressor's [N, 1] -> [N]).
        base = f"/v2/models/{self.name}"
        self._infer_paths = frozenset({f"{base}/infer", f"{base}/versions/{self.version}/infer"})
        self._model_paths = frozenset({base, f"{base}/versions/{self.version}"})
        self._ready_paths = frozenset({f"{base}/ready", f"{base}/versions/{self.version}/ready"})
        self._metadata = orjson.dumps(codecs.model_metadata(self.name, self.version, self.io))
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )
        self._model_ready = orjson.dumps({"name": self.name, "ready": True})
        self._max_body = settings.max_body_bytes
        #: (path, status) -> (requests_total child, request_duration_seconds child).
        self._metric_children: dict[tuple[str, int], tuple] = {}
        self.tfserving = TfServingRoutes(self)  # TF Serving's REST API, on this dataplane

    # ------------------------------------------------------------------ the handler
    def handle(self, request: Request) -> Response | Pending | asyncio.Future:
        try:
            return self._route(request)
        except ServingError as e:
            return _error_response(e, request.path)

    def _route(self, request: Request):
        path, method = request.path, request.method
        if path in self._infer_paths:
            self._check(request, "POST")
            if len(request.body) >= self._offload_bytes:
                return self._offloaded(self._infer_v2, request)
            return self._infer_v2(request)
        if path == "/invocations":
            self._check(request, "POST")
            if len(request.body) >= self._offload_bytes:
                return self._offloaded(self._invocations, request)
            return self._invocations(request)
        if path in ("/v2/health/live", "/ping", "/health"):
            _allow(method, "GET", "HEAD")
            if path == "/v2/health/live":  # KServe V2: {"live": true}
                return Response(200, _LIVE, JSON)
            return self._ready_response(b"\n", "text/plain")
        if path == "/v2/health/ready":
            _allow(method, "GET", "HEAD")
            return self._ready_response(_READY, JSON)
        if path.startswith("/v2/models/") and path.endswith("/ready"):
            _allow(method, "GET", "HEAD")
            return self._model_ready_response(request)
        if path[:4].lower() == "/v1/":
            return self.tfserving.handle(request)
        if self._token is not None and path not in OPEN_PATHS:
            self._authorize(request)
        if path in self._model_paths:
            _allow(method, "GET", "HEAD")
            return Response(200, self._metadata, JSON)
        if path == "/v2":
            _allow(method, "GET", "HEAD")
            return Response(200, self._server_metadata, JSON)
        if path == "/version":  # as `mlflow models serve`: the version as the body's text
            _allow(method, "GET", "HEAD")
            return Response(
                200, __version__.encode(), "text/plain; charset=utf-8", self.model.lineage_headers
            )
        if path == "/metrics":
            _allow(method, "GET", "HEAD")
            self.metrics.inflight_requests.set(self.in_flight())
            return Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)
        if path.startswith("/v2/models/"):
            raise NotFound(
                f"Unknown model or version in {path!r}: this server serves "
                f"'{self.name}' version '{self.version}'",
                field="model",
            )
        raise NotFound(f"No route {path!r}", field="path")

    def _check(self, request: Request, method: str) -> None:
        if request.method != method:
            _allow(request.method, method)
        if self._token is not None:
            self._authorize(request)
        if not self.ready and not self.draining:
            raise NotReady("The model is not ready (starting or shutting down)")
        if self.unready_reason is not None:
            raise NotReady(f"Not ready: {self.unready_reason}")

    def _has_token(self, request: Request) -> bool:
        return request.authorized or self._token_in(request.headers)

    def _token_in(self, headers: dict) -> bool:
        # The auth scheme is case-insensitive (RFC 7235): "bearer <token>" is as good.
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    def token_matches(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` value (HTTP header, gRPC metadata) carries the bearer
        token; always True when none is configured."""
        return self._token is None or self._token_in({"authorization": authorization or ""})

    def _authorize(self, request: Request) -> None:
        if not self._has_token(request):
            raise _unauthorized()

    def early_auth_error(self, path: str, headers: dict) -> ServingError | None:
        """The HTTP layer's token check of a request with a body, once its headers are read
        and before its body is (server.py hands it over when a token is set): _route's rule."""
        if path in OPEN_PATHS or path in self._ready_paths:
            return None
        return None if self._token_in(headers) else _unauthorized()

    # ------------------------------------------------------------------ offloading
    def open_offload(self) -> ThreadPoolExecutor:
        """On the running loop: bind the app to it and start the thread pool large requests
        run on; the caller shuts the pool down."""
        self._loop = self.batcher.loop = asyncio.get_running_loop()
        self.offload = self.batcher.executor = ThreadPoolExecutor(
            self.settings.offload_threads, "offload"
        )
        self._offload_bytes = self.settings.offload_body_bytes
        return self.offload

    def _offloaded(self, infer, request: Request) -> asyncio.Future:
        """A large body: decode, run and encode it on the offload pool, off the loop."""

        def work() -> Response:
            try:
                return infer(request, offloaded=True)
            except ServingError as e:
                return _error_response(e, request.path)

        return self._loop.run_in_executor(self.offload, work)

    def _ready_response(self, body: bytes, content_type: str) -> Response:
        if self.ready and self.unready_reason is None:
            return Response(200, body, content_type)
        if self.unready_reason is not None:
            raise NotReady(f"Not ready: {self.unready_reason}")
        raise NotReady("The model is not ready (starting or shutting down)")

    def _model_ready_response(self, request: Request) -> Response:
        """V2 model ready (``{"name", "ready"}``), a health probe: open, but it only tells a
        served model from an unknown one to a client with the token. Without it, any name gets
        the server's readiness, so a guessed name learns nothing."""
        path = request.path
        if path in self._ready_paths:
            return self._ready_response(self._model_ready, JSON)
        if self._token is not None and not self._has_token(request):
            name = path[len("/v2/models/") :].split("/", 1)[0]
            return self._ready_response(orjson.dumps({"name": name, "ready": True}), JSON)
        raise NotFound(
            f"Unknown model or version in {path!r}: this server serves "
            f"'{self.name}' version '{self.version}'",
            field="model",
        )

    # ------------------------------------------------------------------ inference
    def _body(self, request: Request) -> bytes:
        """The request body, decoded when sent with ``Content-Encoding`` (capped at
        ``max_body_bytes`` decoded; a plain request pays one dict lookup)."""
        coding = request.headers.get("content-encoding")
        if coding is None:
            return request.body
        return codecs.decode_body(request.body, coding, self._max_body)

    def _infer_v2(self, request: Request, offloaded: bool = False) -> Response | Pending:
        body = request.body if "content-encoding" not in request.headers else self._body(request)
        decoded = codecs.decode_v2(body, request.headers, self.io, max_elements=self._max_elements)
        request_id = decoded.id or request.request_id

        def respond(outputs) -> Response:
            named = {
                spec.name: self.io.shaped(spec, out)
                for spec, out in zip(self.io.outputs, outputs, strict=True)
            }
            body, headers = codecs.encode_v2(
                self.name,
                self.version,
                request_id,
                named,
                self.io,
                decoded.requested_outputs,
                decoded.binary_outputs,
            )
            self._log_payload(request.request_id, decoded, named)
            content_type = codecs.V2_BINARY_CONTENT_TYPE if headers else JSON
            return Response(200, body, content_type, headers)

        return self._submit(request, decoded, respond, offloaded)

    def _invocations(self, request: Request, offloaded: bool = False) -> Response | Pending:
        body = request.body if "content-encoding" not in request.headers else self._body(request)
        decoded = codecs.decode_mlflow(
            body,
            request.headers.get("content-type"),
            self.io,
            max_elements=self._max_elements,
        )
        role = codecs.role_for(self.io, (decoded.params or {}).get("predict_method"))
        out_spec = self.io.output_for(role)
        index = self._output_names.index(out_spec.name)

        def respond(outputs) -> Response:
            body = codecs.encode_mlflow(self.io.as_source(out_spec, outputs[index]))
            if self.payload_log is not None:
                named = dict(zip(self._output_names, outputs, strict=True))
                self._log_payload(request.request_id, decoded, named)
            return Response(200, body, JSON)

        return self._submit(request, decoded, respond, offloaded)

    def _submit(self, request: Request, decoded, respond, offloaded: bool) -> Response | Pending:
        """Queue ``decoded`` on the batcher; the Pending gets ``respond(outputs)`` or the error's
        response (a model failure, a ServingError while encoding, or a logged 500 for our own
        bug). ``offloaded``: on the offload pool, the model runs right there and the response
        is returned."""
        if offloaded:
            # batch_size counts this run too, observed on the loop (its histogram's thread)
            self._loop.call_soon_threadsafe(self.metrics.batch_size.observe, decoded.n_rows)
            try:
                outputs = self.model.run(decoded.feed)
            except Exception as e:
                return _error_response(model_error(e), request.path)
            return respond(outputs)
        reply = Pending()

        def done(outputs, error):
            if reply.response is not None:
                return
            if error is not None:
                reply.set(_error_response(model_error(error), request.path))
                return
            try:
                response = respond(outputs)
            except ServingError as e:
                response = _error_response(e, request.path)
            except Exception as e:  # our bug: a generic 500, the details in the log
                response = error_response(e, request.request_id)
            reply.set(response)

        self.batcher.submit(decoded.feed, decoded.n_rows, done)
        return reply

    def _log_payload(self, request_id, decoded, outputs) -> None:
        if self.payload_log is not None:
            self.payload_log.submit(request_id, decoded.columns, outputs)

    # ------------------------------------------------------------------ metadata, logs
    def _children_for(self, key: tuple[str, int]) -> tuple:
        """The request counter and duration histogram of ``(path, status)``; kept for the next
        response unless the path is one of no route (clients choose those: never kept)."""
        route = _route_label(key[0], self)
        children = (
            self.metrics.requests_total.labels(route, str(key[1])),
            self.metrics.request_duration_seconds.labels(route),
        )
        if route != "other" and len(self._metric_children) < 256:
            self._metric_children[key] = children
        return children

    def on_response(self, request: Request, response: Response, duration_s: float) -> None:
        key = (request.path, response.status)
        children = self._metric_children.get(key)
        if children is None:
            children = self._children_for(key)
        children[0].inc()
        children[1].observe(duration_s)
        self.log_access(
            request.method,
            request.path,
            response.status,
            duration_s,
            len(response.body),
            request.request_id,
            request.remote,
        )

    def log_access(self, method, path, status, duration_s, size, request_id, remote) -> None:
        """One access log line: for every request with ``--access-log``, else for errors."""
        if self.access_log is not None and (self._log_every_request or status >= 400):
            self.access_log.record(method, path, status, duration_s, size, request_id, remote)


def _unauthorized() -> Unauthorized:
    return Unauthorized(
        "Missing or wrong bearer token (send 'Authorization: Bearer <token>')",
        headers=[("WWW-Authenticate", "Bearer")],
    )


def _route_label(path: str, app: ServingApp) -> str:
    if path in app._infer_paths:
        return "/v2/models/{name}/infer"
    if path in (
        "/invocations",
        "/ping",
        "/health",
        "/version",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    ):
        return path
    if path in app._model_paths:
        return "/v2/models/{name}"
    if path in app._ready_paths:
        return "/v2/models/{name}/ready"
    return app.tfserving.route_label(path) or "other"


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed(
            f"Method {method} not allowed here; use {' or '.join(allowed)}",
            headers=[("Allow", ", ".join(allowed))],
        )


def _error_response(error: ServingError, path: str) -> Response:
    if path[:4].lower() == "/v1/":  # TF Serving's {"error"} and status codes
        return Response(*tfserving.error_body(error), JSON, list(error.headers))
    body = error.to_mlflow_body() if path == "/invocations" else error.to_body()
    return Response(error.status, body, JSON, list(error.headers))


def warm_up(app: ServingApp, rounds: int = 2) -> None:
    t0 = time.perf_counter()
    for _ in range(rounds):
        app.model.warm_up()
    _logger.debug("Warm-up took %.1f ms", (time.perf_counter() - t0) * 1000)
