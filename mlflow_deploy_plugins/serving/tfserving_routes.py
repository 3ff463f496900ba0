"""TF Serving's REST API front end (``/v1/models/...``) of ``ServingApp``: model status, metadata,
``:predict`` on the app's dataplane (its auth, readiness, offload, batcher, payload log), and
``:classify``/``:regress`` refused with 501. Codecs in ``codecs/tfserving.py``.

A version label is the registry alias the bundle was built from (``models:/name@alias``, as
recorded in the manifest); a bundle built from a version number has none.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import orjson

from mlflow_deploy_plugins.core.manifest import Manifest
from mlflow_deploy_plugins.serving.codecs import tfserving
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    Unimplemented,
)
from mlflow_deploy_plugins.serving.wire import Request, Response

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.app import ServingApp

_logger = logging.getLogger(__name__)

JSON = "application/json"
VERBS = ("predict", "classify", "regress")
#: TF Serving's own path grammar (``http_rest_api_util.cc``): case-insensitive, numeric versions.
_PATH = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<metadata>metadata)|:(?P<verb>classify|regress|predict))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1
_READ, _WRITE = ("GET", "HEAD"), ("POST",)
#: action -> the methods it takes
_METHODS = {
    "status": _READ,
    "metadata": _READ,
    "predict": _WRITE,
    "classify": _WRITE,
    "regress": _WRITE,
}


def bundle_labels(manifest: Manifest) -> dict[str, str]:
    """``{label: version}``: the alias of the ``models:/name@alias`` URI the bundle was built
    from (the ONNX twin's, else the source's), pointing at the served version."""
    labels = {}
    for uri in (manifest.onnx_model.get("model_uri"), manifest.source.get("model_uri")):
        if isinstance(uri, str) and uri.startswith("models:/") and "@" in uri:
            alias = uri.rsplit("@", 1)[1]
            if alias and "/" not in alias and ":" not in alias:
                labels.setdefault(alias, manifest.version)
    return labels


class TfServingRoutes:
    """The ``/v1/`` routes of one ``ServingApp`` (split out of app.py: same dataplane)."""

    def __init__(self, app: ServingApp):
        self.app = app
        self.labels = bundle_labels(app.model.manifest)
        base = f"/v1/models/{app.name}"
        prefixes = [base, f"{base}/versions/{app.version}"]
        prefixes += [f"{base}/labels/{label}" for label in self.labels]
        #: exact path -> (action, metrics route label): the hot path is one dict lookup.
        self.routes: dict[str, tuple[str, str]] = {}
        for prefix in prefixes:
            self.routes[prefix] = ("status", "/v1/models/{name}")
            self.routes[f"{prefix}/metadata"] = ("metadata", "/v1/models/{name}/metadata")
            for verb in VERBS:
                self.routes[f"{prefix}:{verb}"] = (verb, f"/v1/models/{{name}}:{verb}")
        self._metadata = orjson.dumps(tfserving.model_metadata(app.name, app.version, app.io))
        self._status = {
            state: orjson.dumps(tfserving.model_status(app.version, state))
            for state in ("AVAILABLE", "LOADING", "UNLOADING")
        }

    def route_label(self, path: str) -> str | None:
        found = self.routes.get(path)
        return found[1] if found is not None else None

    def handle(self, request: Request):
        app = self.app
        if app._token is not None:  # first: without it, a guessed name learns nothing
            app._authorize(request)
        found = self.routes.get(request.path)
        action = found[0] if found is not None else self._resolve(request)
        if request.method not in _METHODS[action]:
            raise _malformed(request, _METHODS[action])
        if action == "predict":
            app._check(request, "POST")
            if len(request.body) >= app._offload_bytes:
                return app._offloaded(self._predict, request)
            return self._predict(request)
        if action in ("classify", "regress"):
            raise Unimplemented(
                f"This model has no {action.capitalize()} signature: it is served from ONNX "
                f"with one signature, '{tfserving.SIGNATURE}' (method "
                f"{tfserving.PREDICT_METHOD_NAME}); use ':predict', whose answer carries every "
                "output (labels and probabilities for a classifier)",
                field=action,
            )
        if action == "metadata":
            return Response(200, self._metadata, JSON)
        if app.ready and app.unready_reason is None:
            state = "AVAILABLE"
        else:
            state = "UNLOADING" if app.draining else "LOADING"
        return Response(200, self._status[state], JSON)

    def _predict(self, request: Request, offloaded: bool = False):
        app = self.app
        decoded = tfserving.decode_tfserving(
            app._body(request), app.io, max_elements=app._max_elements
        )

        def respond(outputs) -> Response:
            named = {
                spec.name: app.io.shaped(spec, out)
                for spec, out in zip(app.io.outputs, outputs, strict=True)
            }
            body = tfserving.encode_tfserving(named, decoded.columnar)
            app._log_payload(request.request_id, decoded, named)
            return Response(200, body, JSON)

        return app._submit(request, decoded, respond, offloaded)

    # ------------------------------------------------------------------ the slow path
    def _resolve(self, request: Request) -> str:
        """A ``/v1/`` path that is not one of the served model's exact paths: its action when
        it still names the served model (another letter case, a zero-padded version), else
        TF Serving's answer: 400 malformed, 404 unknown model or version, 400 unknown label."""
        path = request.path
        match = _PATH.fullmatch(path)
        if match is None:
            raise BadRequest(
                f"Malformed request: {request.method} {path[:200]} (TF Serving's REST API: "
                "/v1/models/{name}[/versions/{v}|/labels/{l}][/metadata|:predict]"
                ")",
                field="path",
            )
        if match["metadata"]:
            action = "metadata"
        else:
            action = match["verb"].lower() if match["verb"] else "status"
        if request.method not in _METHODS[action]:  # TF Serving matches the method first
            raise _malformed(request, _METHODS[action])
        name, version, label = match["name"], match["version"], match["label"]
        if name is None:
            raise BadRequest("Missing model name in request.", field="model")
        app = self.app
        served = f"this server serves '{app.name}' version {app.version}"
        if version is not None and (len(version) > 19 or int(version) > _INT64_MAX):
            raise BadRequest(f"Failed to convert version: {version} to numeric.", field="version")
        if name != app.name:
            which = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise NotFound(f"Servable not found for request: {which}: {served}", field="model")
        if version is not None and not _same_version(version, app.version):
            raise NotFound(
                f"Servable not found for request: Specific({name}, {version}): {served}",
                field="version",
            )
        if label is not None and label not in self.labels:
            # TF Serving: INVALID_ARGUMENT (server_core.cc), not NOT_FOUND
            known = (
                f"its labels are {sorted(self.labels)}"
                if self.labels
                else "it has no labels (its bundle was not built from a models:/name@alias URI)"
            )
            raise BadRequest(
                f"Unrecognized servable version label: {label[:100]}; {served} and {known}",
                field="label",
            )
        return action


def _same_version(asked: str, served: str) -> bool:
    return int(asked) == int(served) if served.isdigit() else asked == served


def _malformed(request: Request, allowed: tuple[str, ...]) -> MethodNotAllowed:
    """A method the path does not take: 405 with ``Allow`` in our map, 400 on the wire (TF
    Serving's "Malformed request")."""
    return MethodNotAllowed(
        f"Malformed request: {request.method} {request.path[:200]}; use {' or '.join(allowed)}",
        allowed=allowed,
    )
