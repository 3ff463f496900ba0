"""The Kubernetes API of the ``onnx-kubernetes`` target, through the official ``kubernetes``
client: the user's kubeconfig and context (errors say where they were searched), one call path
for every kind the target manages (raw JSON in and out), client errors translated here, JSON
merge patches (RFC 7386), rollout states and the pod events of a failed rollout."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments
from mlflow_deploy_plugins.targets import _k8s_manifests as manifests

_logger = logging.getLogger(__name__)

DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: The last manifest we applied (what the next merge patch is computed from, as kubectl does).
APPLIED = _deployments.LABEL_PREFIX + "applied"


@dataclass(frozen=True)
class Kind:
    """Where the client's methods for one kind are: ``{verb}_{suffix}`` on ``api``."""

    api: str
    suffix: str
    #: A custom resource (CustomObjectsApi takes group, version, plural).
    custom: tuple[str, str, str] | None = None


KINDS = {
    "Secret": Kind("CoreV1Api", "namespaced_secret"),
    "Service": Kind("CoreV1Api", "namespaced_service"),
    "Event": Kind("CoreV1Api", "namespaced_event"),
    "Deployment": Kind("AppsV1Api", "namespaced_deployment"),
    "HorizontalPodAutoscaler": Kind("AutoscalingV2Api", "namespaced_horizontal_pod_autoscaler"),
    "PodDisruptionBudget": Kind("PolicyV1Api", "namespaced_pod_disruption_budget"),
    "InferenceService": Kind(
        "CustomObjectsApi",
        "namespaced_custom_object",
        (manifests.KSERVE_GROUP, manifests.KSERVE_VERSION, manifests.KSERVE_PLURAL),
    ),
}


def require_client():
    """The ``kubernetes`` package, or an error naming the extra that installs it."""
    try:
        import kubernetes
    except ImportError as e:
        raise InvalidInputError(
            "The onnx-kubernetes target needs the kubernetes client: "
            "pip install 'mlflow-deploy-plugins[kubernetes]'"
        ) from e
    return kubernetes


def find_kubeconfig(given: str | None) -> str | None:
    """The kubeconfig to read: ``-C kubeconfig``, else $KUBECONFIG (its files, ':'-separated),
    else ~/.kube/config; None when only in-cluster configuration is left.

    Raises:
        InvalidInputError: ``-C kubeconfig`` names a missing file.
    """
    if given:
        if not os.path.isfile(os.path.expanduser(given)):
            raise InvalidInputError(f"Config key 'kubeconfig': no file at {given!r}")
        return os.path.expanduser(given)
    env = os.environ.get("KUBECONFIG", "")
    found = [p for p in env.split(os.pathsep) if p and os.path.isfile(os.path.expanduser(p))]
    if found:
        return os.pathsep.join(os.path.expanduser(p) for p in found)
    default = os.path.expanduser(DEFAULT_KUBECONFIG)
    return default if os.path.isfile(default) else None


def _nothing_found() -> InvalidInputError:
    env = os.environ.get("KUBECONFIG")
    return InvalidInputError(
        "No Kubernetes configuration found. Searched, in order: -C kubeconfig= (not set); "
        f"KUBECONFIG ({'no readable file in ' + repr(env) if env else 'not set'}); "
        f"{DEFAULT_KUBECONFIG} ({os.path.expanduser(DEFAULT_KUBECONFIG)}: missing); "
        "in-cluster service account (KUBERNETES_SERVICE_HOST not set or no token at "
        f"{IN_CLUSTER_TOKEN}). Set -C kubeconfig=PATH (and -C context=NAME), export "
        "KUBECONFIG, or run `kubectl config view` to check yours."
    )


def connect(kubeconfig: str | None, context: str | None, namespace: str | None, target: str):
    """A :class:`Cluster` from the user's kubeconfig and context (or in-cluster configuration).

    Raises:
        InvalidInputError: no configuration (where it was searched is said), an unknown
            context (the known ones are listed), or an unusable file.
    """
    kubernetes = require_client()
    from kubernetes import config as kconfig

    path = find_kubeconfig(kubeconfig)
    configuration = kubernetes.client.Configuration()
    default_namespace = "default"
    where = ""
    if path is None:
        if not (os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(IN_CLUSTER_TOKEN)):
            raise _nothing_found()
        kconfig.load_incluster_config(client_configuration=configuration)
        where = "in-cluster service account"
        with open(IN_CLUSTER_TOKEN.replace("token", "namespace")) as f:
            default_namespace = f.read().strip() or default_namespace
    else:
        try:
            contexts, active = kconfig.list_kube_config_contexts(config_file=path)
        except (kconfig.ConfigException, OSError, ValueError) as e:
            raise InvalidInputError(f"Kubeconfig {path} cannot be read: {e}") from e
        names = [c["name"] for c in contexts or []]
        chosen = next((c for c in contexts or [] if c["name"] == context), None)
        if context and chosen is None:
            raise InvalidInputError(
                f"Config key 'context': no context {context!r} in {path} "
                f"(contexts there: {', '.join(names) or 'none'})"
            )
        chosen = chosen or active
        if chosen is None:
            raise InvalidInputError(
                f"Kubeconfig {path} has no current-context: set -C context= to one of "
                f"{', '.join(names) or '(none: the file defines no context)'}"
            )
        try:
            kconfig.load_kube_config(
                config_file=path, context=chosen["name"], client_configuration=configuration
            )
        except (kconfig.ConfigException, OSError, ValueError) as e:
            raise InvalidInputError(f"Context {chosen['name']!r} of {path} is unusable: {e}") from e
        where = f"context {chosen['name']!r} of {path}"
        default_namespace = chosen.get("context", {}).get("namespace") or default_namespace
    configuration.retries = 1  # an unreachable API server is reported at once
    return Cluster(configuration, namespace or default_namespace, where, target)


class Cluster:
    """One namespace of one cluster, as the target sees it (raw JSON objects)."""

    def __init__(self, configuration, namespace: str, where: str, target: str):
        kubernetes = require_client()
        self.namespace = namespace
        self.where = where
        self.target = target
        self.server = configuration.host
        self.client = kubernetes.client.ApiClient(configuration)
        # Typed patch methods pick JSON Patch for a dict body: this client sends merge patches.
        self.patch_client = kubernetes.client.ApiClient(
            configuration, header_name="Content-Type", header_value="application/merge-patch+json"
        )

    def call(self, verb: str, kind: str, name: str | None = None, body=None, **query) -> Any:
        """``{verb}_{kind}`` in this namespace; the decoded JSON answer, None on 404 for reads.

        Raises:
            AlreadyExistsError: 409 on create.
            InvalidInputError: 422/400 (the API server's message) or 403 (what was refused).
            EngineUnavailableError: the API server cannot be reached.
            DeploymentError: any other answer.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        spec = KINDS[kind]
        api_class = getattr(require_client().client, spec.api)
        api = api_class(self.patch_client if verb == "patch" else self.client)
        method = "get" if verb == "read" and spec.custom else verb
        args: list[Any] = []
        if spec.custom:  # (group, version, namespace, plural)
            group, version, plural = spec.custom
            args = [group, version, self.namespace, plural]
        if name is not None:
            args = [*args, name] if spec.custom else [name]
        if not spec.custom:
            args.append(self.namespace)
        if body is not None:
            args.append(body)
        what = f"{verb} {kind}{' ' + name if name else ''} in namespace {self.namespace!r}"
        try:
            answer = getattr(api, f"{method}_{spec.suffix}")(*args, _preload_content=False, **query)
        except ApiException as e:
            if e.status == 404 and verb in ("read", "delete"):
                return None
            raise self._translate(e, what, kind) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _deployments.EngineUnavailableError(
                f"The Kubernetes API server {self.server} ({self.where}) does not answer: {e}"
            ) from e
        data = answer.data
        return json.loads(data) if data else {}

    def _translate(self, e, what: str, kind: str) -> Exception:
        message = _api_message(e)
        if e.status == 409:
            return AlreadyExistsError(f"Cannot {what}: {message}")
        if e.status in (400, 422):
            return InvalidInputError(f"The API server refused to {what}: {message}")
        if e.status in (401, 403):
            return InvalidInputError(
                f"Not allowed to {what} ({self.where}): {message}. Check the context's "
                "credentials and RBAC (kubectl auth can-i)"
            )
        if e.status == 404:
            return _deployments.DeploymentError(
                f"Cannot {what}: the API server does not know {kind} here ({message})"
            )
        return _deployments.DeploymentError(f"Cannot {what}: HTTP {e.status} {message}")

    # --- objects -------------------------------------------------------------------------------

    def read(self, kind: str, name: str) -> dict | None:
        return self.call("read", kind, name)

    def create(self, obj: dict) -> dict:
        return self.call("create", obj["kind"], body=obj)

    def patch(self, kind: str, name: str, patch: dict) -> dict:
        return self.call("patch", kind, name, patch)

    def delete(self, kind: str, name: str) -> bool:
        """Delete; False when it was not there."""
        return self.call("delete", kind, name) is not None

    def list(self, kind: str, label_selector: str | None = None) -> list[dict]:
        query = {"label_selector": label_selector} if label_selector else {}
        return self.call("list", kind, **query).get("items", [])

    def apply(self, obj: dict) -> tuple[dict | None, dict]:
        """Create ``obj``, or merge-patch the live one from the manifest last applied to it.

        Returns:
            ``(the manifest applied before or None, the object now)``.
        """
        obj = with_applied(obj)
        current = self.read(obj["kind"], obj["metadata"]["name"])
        if current is None:
            return None, self.create(obj)
        before = applied_of(current)
        patch = merge_patch(before or {}, obj)
        return before, self.patch(obj["kind"], obj["metadata"]["name"], patch)

    def crd_installed(self, crd: str) -> bool:
        """Whether CustomResourceDefinition ``crd`` exists (read through ApiextensionsV1Api;
        a user who may not read CRDs is answered by listing the resource in the namespace)."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        api = require_client().client.ApiextensionsV1Api(self.client)
        try:
            api.read_custom_resource_definition(crd, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return False
            if e.status != 403 or crd != manifests.KSERVE_CRD:
                raise self._translate(e, f"read CustomResourceDefinition {crd}", "CRD") from e
            try:
                self.call("list", "InferenceService")
            except _deployments.DeploymentError:  # 404: the API does not exist here
                return False
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _deployments.EngineUnavailableError(
                f"The Kubernetes API server {self.server} ({self.where}) does not answer: {e}"
            ) from e
        return True

    def events(self, name: str, limit: int = 20) -> list[str]:
        """The latest events of the objects and pods of deployment ``name`` (pods are named
        after their Deployment or KServe predictor), warnings first."""
        found = [
            e
            for e in self.list("Event")
            if e.get("involvedObject", {}).get("name", "").startswith(name)
        ]
        found.sort(key=_event_time, reverse=True)  # newest first,
        found.sort(key=lambda e: e.get("type") != "Warning")  # then warnings first (stable)
        lines = []
        for e in found[:limit]:
            involved = e.get("involvedObject", {})
            lines.append(
                f"{e.get('type', '?')} {e.get('reason', '?')} "
                f"{involved.get('kind', '?')}/{involved.get('name', '?')}: {e.get('message', '')}"
            )
        return lines


def _event_time(event: dict) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or "")


def _api_message(e) -> str:
    try:
        return json.loads(e.body).get("message") or e.reason
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


# --- merge patches and the last applied manifest ---------------------------------------------


def merge_patch(old: dict, new: dict) -> dict:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (removed keys -> null)."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before:
            patch[key] = value
    return patch


def with_applied(obj: dict) -> dict:
    """``obj`` carrying itself (minus this annotation) in the :data:`APPLIED` annotation.
    A Secret is returned as is: its data is not copied into an annotation."""
    if obj["kind"] == "Secret":
        return obj
    meta = obj["metadata"]
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED}
    bare = {**obj, "metadata": {**meta, "annotations": notes}}
    return {
        **obj,
        "metadata": {**meta, "annotations": {**notes, APPLIED: json.dumps(bare, sort_keys=True)}},
    }


def applied_of(live: dict) -> dict | None:
    """The manifest last applied to a live object (None when it was made by someone else)."""
    text = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED)
    return with_applied(json.loads(text)) if text else None


# --- rollout states ----------------------------------------------------------------------------

READY, PROGRESSING, FAILED = "ready", "progressing", "failed"


def rollout_state(obj: dict) -> tuple[str, str]:
    """``(ready | progressing | failed, why)`` of a Deployment (as ``kubectl rollout status``
    reads it) or an InferenceService (its ``Ready`` condition)."""
    status = obj.get("status") or {}
    generation = obj.get("metadata", {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return PROGRESSING, "waiting for the controller to see the new spec"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if obj.get("kind") == "InferenceService":
        ready = conditions.get("Ready", {})
        why = f"{ready.get('reason', '')}: {ready.get('message', '')}".strip(": ")
        state = {"True": READY, "False": FAILED}.get(ready.get("status"), PROGRESSING)
        return state, why or "Ready condition not reported yet"
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return FAILED, progressing.get("message") or "progress deadline exceeded"
    desired = obj.get("spec", {}).get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < desired:
        return PROGRESSING, f"{updated} of {desired} pods updated"
    if total > updated:
        return PROGRESSING, f"{total - updated} old pods still terminating"
    if available < updated:
        return PROGRESSING, f"{available} of {updated} updated pods available"
    return READY, f"{available} pods available"
