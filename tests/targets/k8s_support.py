"""A FAKE Kubernetes API server for the onnx-kubernetes tests (no real API server can run on
these machines: none in Debian or PyPI, no image pulls). It is not our code under test: it
stands in for the cluster, on 127.0.0.1, and speaks the real REST paths the official
``kubernetes`` client calls:

  /api/v1/namespaces/{ns}/{secrets,services,events}[/{name}[/status]]
  /apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/status]]   (apps, autoscaling,
      policy, serving.kserve.io)
  /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}

It stores objects (uid, resourceVersion, generation bumped on spec changes), answers 404/409/
401/415 as the API server does (a JSON Patch body to a merge-patch path is refused: that is the
client's default for typed patches), applies JSON merge patches (RFC 7386; strategic merge
patches are applied the same way, which is exact for the maps-and-whole-lists patches the
target sends), filters lists by equality label selectors, and records every request.

What a controller would do is played by ``rollouts``: each write to a Deployment's or an
InferenceService's spec takes the next outcome (``ready`` by default, ``failed``, or ``pending``)
and sets the status a real controller reports for it, plus the pod events of a failure. A test
can also flip a status itself, through the real ``/status`` subresource path.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = f"fake-sa-token-{uuid.uuid4().hex[:8]}"
CRD_GROUP = "apiextensions.k8s.io/v1"
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$"
)


def merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeApiServer:
    """The fake cluster: ``objects[(api, ns, plural, name)] = obj`` (api: ``v1`` or
    ``group/version``; ns ``""`` for cluster-scoped)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.rollouts: deque[str] = deque()
        self.isvc_url = ""
        self.lock = threading.RLock()
        self._version = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path, namespace: str = "ml", context: str = "fake") -> str:
        """A kubeconfig file whose context ``context`` points at this server."""
        import yaml

        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": TOKEN}}],
                    "contexts": [
                        {
                            "name": context,
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        },
                        {"name": "other", "context": {"cluster": "fake", "user": "fake"}},
                    ],
                    "current-context": context,
                }
            )
        )
        return str(path)

    def install_kserve(self, crd: dict) -> None:
        """Register the InferenceService CRD (as installing KServe does)."""
        with self.lock:
            self.objects[(CRD_GROUP, "", "customresourcedefinitions", crd["metadata"]["name"])] = (
                crd
            )

    def uninstall_kserve(self) -> None:
        with self.lock:
            for key in [k for k in self.objects if k[2] == "customresourcedefinitions"]:
                del self.objects[key]

    def get(self, api: str, ns: str, plural: str, name: str) -> dict | None:
        with self.lock:
            found = self.objects.get((api, ns, plural, name))
            return json.loads(json.dumps(found)) if found is not None else None

    def names(self, ns: str) -> set[tuple[str, str]]:
        """``(plural, name)`` of every object in namespace ``ns``."""
        with self.lock:
            return {(k[2], k[3]) for k in self.objects if k[1] == ns}

    # --- the controller's part ---------------------------------------------------------------

    def _controller(self, obj: dict, ns: str) -> None:
        """Set the status a controller reports for the new spec, per the next outcome."""
        outcome = self.rollouts.popleft() if self.rollouts else "ready"
        if outcome == "pending":
            return
        name, generation = obj["metadata"]["name"], obj["metadata"]["generation"]
        if obj["kind"] == "Deployment":
            n = obj["spec"].get("replicas", 1)
            if outcome == "ready":
                obj["status"] = {
                    "observedGeneration": generation,
                    "replicas": n,
                    "updatedReplicas": n,
                    "readyReplicas": n,
                    "availableReplicas": n,
                    "conditions": [
                        {"type": "Available", "status": "True"},
                        {
                            "type": "Progressing",
                            "status": "True",
                            "reason": "NewReplicaSetAvailable",
                        },
                    ],
                }
            else:
                obj["status"] = {
                    "observedGeneration": generation,
                    "replicas": n + 1,
                    "updatedReplicas": 1,
                    "availableReplicas": n,
                    "conditions": [
                        {
                            "type": "Progressing",
                            "status": "False",
                            "reason": "ProgressDeadlineExceeded",
                            "message": f'ReplicaSet "{name}-7d9f" has timed out progressing.',
                        }
                    ],
                }
        else:
            ready = outcome == "ready"
            obj["status"] = {
                "observedGeneration": generation,
                "url": self.isvc_url,
                "conditions": [
                    {"type": "Ready", "status": "True"}
                    if ready
                    else {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RevisionFailed",
                        "message": f'Revision "{name}-predictor-00002" failed: container exited',
                    }
                ],
            }
        if outcome == "failed":
            pod = f"{name}-{'predictor-00002-deployment-' if obj['kind'] != 'Deployment' else ''}7d9f-x2k"
            self._event(ns, pod, "BackOff", "Back-off restarting failed container server")
            self._event(ns, pod, "Unhealthy", "Readiness probe failed: HTTP probe failed with 503")

    def _event(self, ns: str, pod: str, reason: str, message: str) -> None:
        name = f"{pod}.{uuid.uuid4().hex[:8]}"
        self.objects[("v1", ns, "events", name)] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns},
            "type": "Warning",
            "reason": reason,
            "message": message,
            "lastTimestamp": _now(),
        }

    # --- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": reason, "message": message, "code": code},
                )  # fmt: skip

            def _handle(self, method: str) -> None:
                path, _, query = self.path.partition("?")
                fake.requests.append((method, path, self.headers.get("Content-Type", "")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._status(401, "Unauthorized", "Unauthorized")
                m = _PATH.match(path)
                if not m:
                    return self._status(404, "NotFound", f"no route {path}")
                api = m["core"] or f"{m['group']}/{m['version']}"
                ns, plural, name = m["ns"] or "", m["plural"], m["name"]
                if api.startswith("serving.kserve.io") and not any(
                    k[2] == "customresourcedefinitions" for k in fake.objects
                ):
                    return self._status(404, "NotFound", "the server could not find the resource")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    return self._dispatch(method, api, ns, plural, name, m["sub"], body, query)

            def _dispatch(self, method, api, ns, plural, name, sub, body, query):
                key = (api, ns, plural, name)
                current = fake.objects.get(key)
                if method == "GET" and name is None:
                    items = [o for k, o in fake.objects.items() if k[:3] == (api, ns, plural)]
                    selector = dict(
                        pair.split("=", 1)
                        for pair in _query(query).get("labelSelector", "").split(",")
                        if "=" in pair
                    )
                    items = [
                        o for o in items
                        if selector.items() <= (o["metadata"].get("labels") or {}).items()
                    ]  # fmt: skip
                    return self._send(200, {"kind": "List", "items": items, "metadata": {}})
                if method == "POST":
                    name = body["metadata"]["name"]
                    key = (api, ns, plural, name)
                    if key in fake.objects:
                        return self._status(
                            409, "AlreadyExists", f'{plural} "{name}" already exists'
                        )
                    fake._version += 1
                    body["metadata"].update(
                        namespace=ns, uid=str(uuid.uuid4()), generation=1,
                        resourceVersion=str(fake._version), creationTimestamp=_now(),
                    )  # fmt: skip
                    fake.objects[key] = body
                    if body["kind"] in ("Deployment", "InferenceService"):
                        fake._controller(body, ns)
                    return self._send(201, body)
                if current is None:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found')
                if method == "GET":
                    return self._send(200, current)
                if method == "DELETE":
                    del fake.objects[key]
                    return self._send(200, {"kind": "Status", "status": "Success"})
                if method == "PATCH":
                    kind = self.headers.get("Content-Type", "")
                    if kind not in (
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                    ):
                        return self._status(415, "UnsupportedMediaType", f"{kind} not accepted")
                    updated = merge(current, body)
                elif method == "PUT":
                    updated = body
                else:
                    return self._status(405, "MethodNotAllowed", method)
                if sub == "status":
                    current["status"] = updated.get("status")
                    return self._send(200, current)
                updated["status"] = current.get("status")
                fake._version += 1
                updated["metadata"]["resourceVersion"] = str(fake._version)
                spec_changed = updated.get("spec") != current.get("spec")
                updated["metadata"]["generation"] = current["metadata"]["generation"] + (
                    1 if spec_changed else 0
                )
                fake.objects[key] = updated
                if spec_changed and updated["kind"] in ("Deployment", "InferenceService"):
                    fake._controller(updated, ns)
                return self._send(200, updated)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_DELETE(self):
                self._handle("DELETE")

        return Handler


def _query(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query))
