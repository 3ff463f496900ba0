"""The lifecycle of the ``onnx-kubernetes`` target (create, update, delete, list, get, predict,
dry run) on one cluster namespace; the target's client delegates every call here. Everything
``get`` shows is read from the cluster (annotations, status), never from a local file."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _k8s_image, _predict
from mlflow_deploy_plugins.targets import _k8s_api as k8s
from mlflow_deploy_plugins.targets import _k8s_manifests as manifests
from mlflow_deploy_plugins.targets._images.recipes import Recipe

_logger = logging.getLogger(__name__)

#: Names of Kubernetes Services (DNS-1035 labels); the objects of a deployment all take it.
_K8S_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$")
#: The kinds that make the endpoint, after the main object (Deployment or InferenceService).
_COMPANIONS = ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")


def check_k8s_name(name: str) -> str:
    """A deployment name that is also a valid name for every object the target makes.

    Raises:
        InvalidInputError: not 1-52 lowercase letters, digits or '-' starting with a letter.
    """
    _deployments.validate_name(name)
    if not _K8S_NAME.match(name):
        raise InvalidInputError(
            f"Deployment name {name!r} is not a valid Kubernetes name here: use 1-52 lowercase "
            "letters, digits and '-', starting with a letter and ending with a letter or digit "
            "(it names the Service, the pods' prefix and the token Secret)"
        )
    return name


@dataclass
class KubernetesTarget:
    """Deployments of one target on a Kubernetes cluster (see the module docstring)."""

    target: str
    flavor: str
    config_class: Any
    recipe: Recipe
    progress: Callable[[str], None]
    docker_client: Any = field(default=None, repr=False)

    # --- create / update / delete --------------------------------------------------------------

    def create_deployment(self, name: str, model_uri: str, flavor=None, config=None) -> dict:
        """Build and push the image, create the Secret and the workload, and block until the
        rollout is ready (bounded by ``rollout_timeout``); a failed create deletes what it made.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for bad config, no kubeconfig, a missing
                KServe CRD or an unreachable registry (all before anything is built);
                RESOURCE_ALREADY_EXISTS for an existing name; INTERNAL_ERROR with the pod
                events when the rollout fails or times out.
        """
        check_k8s_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config(config)
        self._check(cfg)
        token = _token(cfg)
        if cfg.dry_run:
            return self._dry_run(name, model_uri, cfg, token)
        cluster = self._connect(cfg)
        cfg = cfg.replace(namespace=cluster.namespace)
        self._require_kind(cluster, cfg.kind)
        if self._find(cluster, name) is not None:
            raise AlreadyExistsError(
                f"Deployment '{name}' already exists in namespace {cluster.namespace!r}: update "
                "it (mlflow deployments update) or delete it first"
            )
        objects = self._render(name, model_uri, cfg, token)
        made: list[dict] = []
        try:
            for obj in objects:
                cluster.create(k8s.with_applied(obj))
                made.append(obj)
                self.progress(f"Created {obj['kind']} {obj['metadata']['name']}")
            self._wait(cluster, _main(objects), cfg.rollout_timeout)
        except BaseException:
            for obj in reversed(made):
                cluster.delete(obj["kind"], obj["metadata"]["name"])
            raise
        return self.get_deployment(name, cluster)

    def update_deployment(self, name: str, model_uri=None, flavor=None, config=None) -> dict:
        """Patch the workload to the new image/config and wait for the rollout (Deployment
        status / KServe Ready). A failed or timed-out rollout is rolled back (the previous pod
        template / predictor spec, and token) and reported with the pod events.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST for an unknown name; INTERNAL_ERROR when
                the rollout failed (after the rollback).
        """
        _deployments.check_flavor(flavor, self.target)
        given = self.config_class.from_config(config)
        cluster = self._connect(given)
        live = self._find(cluster, name)
        if live is None:
            raise self._not_found(cluster, name)
        remembered = json.loads(_notes(live).get(_deployments.LABEL_CONFIG, "{}"))
        cfg = self.config_class.from_config({**remembered, **(config or {})})
        cfg = cfg.replace(namespace=cluster.namespace)
        kind = "kserve" if live["kind"] == "InferenceService" else "deployment"
        if cfg.kind != kind:
            raise InvalidInputError(
                f"Config key 'kind': '{name}' is a {kind} deployment; changing it to "
                f"{cfg.kind} needs delete + create"
            )
        self._check(cfg)
        token = self._update_token(cluster, name, cfg, config or {})
        model_uri = model_uri or _notes(live).get(_deployments.LABEL_MODEL_URI)
        if cfg.dry_run:
            return self._dry_run(name, model_uri, cfg, token)
        objects = self._render(name, model_uri, cfg, token)
        main = _main(objects)
        secret = cluster.read("Secret", manifests.secret_name(name)) if token else None
        if token:
            cluster.apply(objects[0])
        self.progress(
            f"Updating {main['kind']} '{name}': {_notes(live).get(_deployments.LABEL_IMAGE)} -> "
            f"{main['metadata']['annotations'][_deployments.LABEL_IMAGE]}"
        )
        before, _ = cluster.apply(main)
        try:
            self._wait(cluster, main, cfg.rollout_timeout)
        except _deployments.DeploymentError as e:
            self._roll_back(cluster, main, before, secret, e, cfg.rollout_timeout)
        for obj in objects:
            if obj["kind"] in _COMPANIONS:
                cluster.apply(obj)
        for kind in _COMPANIONS:  # e.g. a PodDisruptionBudget no longer asked for
            if kind not in {o["kind"] for o in objects} and _ours(cluster.read(kind, name)):
                cluster.delete(kind, name)
        if not token and cluster.delete("Secret", manifests.secret_name(name)):
            self.progress(f"Deleted Secret {manifests.secret_name(name)} (no auth_token_file)")
        return self.get_deployment(name, cluster)

    def _update_token(self, cluster, name: str, cfg, config: dict) -> str | None:
        """The token of an update: the file's, or, when the remembered file cannot be read here
        and this call names none, the one the Secret already holds."""
        try:
            return _token(cfg)
        except InvalidInputError:
            if "auth_token_file" in config:
                raise
            secret = cluster.read("Secret", manifests.secret_name(name))
            if secret is None:
                raise
            self.progress(
                f"auth_token_file {cfg.auth_token_file!r} is not readable here: the "
                "token in the Secret is kept"
            )
            return manifests.secret_token(secret)

    def _roll_back(
        self, cluster, main: dict, before: dict | None, secret, failure, timeout: float
    ) -> None:
        """Put the previous spec back (a reverse merge patch), wait for it, and raise the
        failure with the pod events."""
        events = cluster.events(main["metadata"]["name"])
        name, kind = main["metadata"]["name"], main["kind"]
        outcome = "no previous manifest to restore"
        if before is not None:
            cluster.patch(kind, name, k8s.merge_patch(k8s.with_applied(main), before))
            if secret is not None:
                cluster.patch("Secret", secret["metadata"]["name"], {"data": secret["data"]})
            self.progress(f"Rolling '{name}' back to the previous version")
            try:
                self._wait(cluster, before, timeout)
                outcome = "rolled back: the previous version serves"
            except _deployments.DeploymentError as e:
                outcome = f"rolled back, but the previous version is not ready either: {e.summary}"
        raise _deployments.DeploymentError(
            f"Update of '{name}' failed: {failure.summary}; {outcome}",
            logs="\n".join(events) or "(no events)",
        ) from failure

    def delete_deployment(self, name: str, config=None) -> None:
        """Delete the workload, Service, HPA, PDB and token Secret; no error when absent. An
        object of that name this target did not make is refused."""
        cfg = self.config_class.from_config(config)
        cluster = self._connect(cfg)
        live = self._find(cluster, name)
        for kind in ("InferenceService", "Deployment", *_COMPANIONS):
            if kind == "InferenceService" and (live or {}).get("kind") != kind:
                continue
            obj = live if live is not None and live["kind"] == kind else cluster.read(kind, name)
            if obj is None:
                continue
            if not _ours(obj, self.target):
                raise InvalidInputError(
                    f"{kind} '{name}' in namespace {cluster.namespace!r} was not made by "
                    f"{self.target}: not deleting it"
                )
            cluster.delete(kind, name)
            self.progress(f"Deleted {kind} {name}")
        if cluster.delete("Secret", manifests.secret_name(name)):
            self.progress(f"Deleted Secret {manifests.secret_name(name)}")

    # --- list / get / predict -------------------------------------------------------------------

    def list_deployments(self) -> list[dict]:
        """Every deployment of this target in the namespace (selected by its label)."""
        cluster = self._connect(None)
        selector = f"{_deployments.LABEL_TARGET}={self.target}"
        found = cluster.list("Deployment", selector)
        if cluster.crd_installed(manifests.KSERVE_CRD):
            found += cluster.list("InferenceService", selector)
        return [self._describe(cluster, obj) for obj in found]

    def get_deployment(self, name: str, cluster=None) -> dict:
        """Kind, status, endpoint URL, lineage, image and config of ``name``."""
        cluster = cluster or self._connect(None)
        live = self._find(cluster, name)
        if live is None:
            raise self._not_found(cluster, name)
        return self._describe(cluster, live)

    def predict(self, deployment_name: str, inputs: Any):
        """Score ``inputs`` on the deployment's endpoint URL (``-C endpoint_url``, KServe's
        ``status.url`` or the Service's load balancer), with the token from its Secret."""
        cluster = self._connect(None)
        info = self.get_deployment(deployment_name, cluster)
        if not info["endpoint_url"]:
            raise InvalidInputError(
                f"Deployment '{deployment_name}' has no endpoint reachable from here: run "
                f"`kubectl -n {cluster.namespace} port-forward svc/{deployment_name} 8080:80` "
                f"and update it with -C endpoint_url=http://127.0.0.1:8080 (or use an Ingress "
                "or -C service_type=LoadBalancer)"
            )
        secret = cluster.read("Secret", manifests.secret_name(deployment_name))
        token = manifests.secret_token(secret) if secret is not None else None
        return _predict.predict(
            deployment_name,
            info["endpoint_url"].rstrip("/"),
            inputs,
            served_model=info["served_model"],
            auth_token=token,
        )

    # --- parts ----------------------------------------------------------------------------------

    def _connect(self, cfg) -> k8s.Cluster:
        return k8s.connect(
            getattr(cfg, "kubeconfig", None),
            getattr(cfg, "context", None),
            getattr(cfg, "namespace", None),
            self.target,
        )

    def _check(self, cfg) -> None:
        if cfg.max_replicas < cfg.min_replicas:
            raise InvalidInputError(
                f"Config key 'max_replicas' of target '{self.target}'={cfg.max_replicas} is "
                f"below min_replicas={cfg.min_replicas}"
            )
        if cfg.canary_traffic_percent is not None and cfg.kind != "kserve":
            raise InvalidInputError(
                f"Config key 'canary_traffic_percent' of target '{self.target}' needs kind=kserve"
                " (a Deployment rolls all pods; use KServe for a canary)"
            )
        if cfg.grpc_port is not None and cfg.kind != "deployment":
            raise InvalidInputError(
                f"Config key 'grpc_port' of target '{self.target}' needs kind=deployment: a KServe "
                "custom predictor exposes one port (Knative routes a single port per container), "
                "which the HTTP probes and V2 REST use"
            )
        if cfg.grpc_port == manifests.SERVICE_PORT:
            raise InvalidInputError(
                f"Config key 'grpc_port' of target '{self.target}'={cfg.grpc_port} is the "
                "Service's HTTP port; choose another (8081 is usual)"
            )
        if not cfg.image and not cfg.registry:
            raise InvalidInputError(
                f"Config key 'registry' of target '{self.target}' is required: the registry the "
                "cluster pulls from (-C registry=HOST[:PORT][/PATH]), or -C image=REF@sha256:... "
                "to deploy an image already pushed"
            )

    def _require_kind(self, cluster: k8s.Cluster, kind: str) -> None:
        if kind == "kserve" and not cluster.crd_installed(manifests.KSERVE_CRD):
            raise InvalidInputError(
                f"KServe is not installed on this cluster ({cluster.where}): the "
                f"CustomResourceDefinition {manifests.KSERVE_CRD} is missing. Install KServe, "
                "or deploy without it with -C kind=deployment (Deployment + Service + HPA)"
            )

    def _find(self, cluster: k8s.Cluster, name: str) -> dict | None:
        """The deployment's main object: its Deployment, else its InferenceService."""
        found = cluster.read("Deployment", name)
        if found is None and cluster.crd_installed(manifests.KSERVE_CRD):
            found = cluster.read("InferenceService", name)
        if found is not None and not _ours(found, self.target):
            return None
        return found

    def _not_found(self, cluster, name: str) -> _deployments.DeploymentNotFoundError:
        return _deployments.DeploymentNotFoundError(
            f"No deployment named '{name}' on {self.target} in namespace {cluster.namespace!r} "
            f"({cluster.where})"
        )

    def _render(self, name: str, model_uri: str, cfg, token: str | None) -> list[dict]:
        """Resolve the model, get its image (built, pushed, by digest) and render the objects."""
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
            image = cfg.image or _k8s_image.build_and_push(self, resolved, cfg)
        notes = manifests.annotations(self.target, name, resolved, image, cfg.remembered())
        return manifests.render(cfg, self.target, name, image, notes, token)

    def _dry_run(self, name: str, model_uri: str, cfg, token: str | None) -> dict:
        """Write the manifests as YAML (``-C output=DIR``, else stdout); no cluster is asked.
        The token Secret is never written: the command that makes it is printed instead."""
        cfg = cfg.replace(namespace=cfg.namespace or "default")
        objects = self._render(name, model_uri, cfg, token)
        shown = [o for o in objects if o["kind"] != "Secret"]
        text = manifests.to_yaml(shown)
        written = []
        if cfg.output:
            os.makedirs(cfg.output, exist_ok=True)
            for i, obj in enumerate(shown):
                path = os.path.join(cfg.output, f"{i:02d}-{obj['kind'].lower()}-{name}.yaml")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(manifests.to_yaml([obj]))
                written.append(path)
            self.progress(f"Wrote {len(written)} manifests to {cfg.output}")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        if token:
            self.progress(
                f"The token Secret is not written; create it with: kubectl -n {cfg.namespace} "
                f"create secret generic {manifests.secret_name(name)} "
                f"--from-file={manifests.TOKEN_KEY}={cfg.auth_token_file}"
            )
        main = _main(objects)
        return {
            "name": name,
            "flavor": self.flavor,
            "target": self.target,
            "kind": main["kind"],
            "namespace": cfg.namespace,
            "status": "dry_run",
            "image": main["metadata"]["annotations"][_deployments.LABEL_IMAGE],
            "manifests": written or text,
        }

    def _wait(self, cluster: k8s.Cluster, obj: dict, timeout: float) -> None:
        """Poll the rollout of ``obj`` until ready; a failure or the timeout raises with the
        events of its pods."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        deadline = time.monotonic() + timeout
        last = ""
        delay = 0.1
        while True:
            live = cluster.read(kind, name)
            state, why = k8s.rollout_state(live or {})
            if why != last:
                self.progress(f"{kind} {name}: {state} ({why})")
                last = why
            if state == k8s.READY:
                return
            if state == k8s.FAILED or time.monotonic() >= deadline:
                reason = why if state == k8s.FAILED else f"not ready within {timeout:g} s ({why})"
                raise _deployments.DeploymentError(
                    f"{kind} '{name}' rollout failed: {reason}",
                    logs="\n".join(cluster.events(name)) or "(no events)",
                )
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)

    def _describe(self, cluster: k8s.Cluster, live: dict) -> dict:
        notes = _notes(live)
        config = json.loads(notes.get(_deployments.LABEL_CONFIG, "{}"))
        state, why = k8s.rollout_state(live)
        name = live["metadata"]["name"]
        return {
            "name": name,
            "flavor": self.flavor,
            "target": self.target,
            "kind": live["kind"],
            "namespace": live["metadata"].get("namespace", cluster.namespace),
            "status": state,
            "status_message": why,
            "endpoint_url": config.get("endpoint_url") or self._endpoint(cluster, live),
            **_deployments.describe_lineage(notes),
            "image": notes.get(_deployments.LABEL_IMAGE),
            "replicas": (live.get("status") or {}).get("availableReplicas"),
            "created_at": notes.get(_deployments.LABEL_CREATED),
            "config": config,
        }

    def _endpoint(self, cluster: k8s.Cluster, live: dict) -> str | None:
        if live["kind"] == "InferenceService":
            return (live.get("status") or {}).get("url")
        service = cluster.read("Service", live["metadata"]["name"]) or {}
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            host = ingress.get("hostname") or ingress.get("ip")
            if host:
                return f"http://{host}:{manifests.SERVICE_PORT}"
        return None

    def docker(self):
        from mlflow_deploy_plugins.targets import _docker

        if self.docker_client is None:
            self.docker_client = _docker.connect(None, self.target)
        return self.docker_client


def _main(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] in ("Deployment", "InferenceService"))


def _notes(obj: dict) -> dict:
    return obj.get("metadata", {}).get("annotations") or {}


def _ours(obj: dict | None, target: str = "") -> bool:
    labels = (obj or {}).get("metadata", {}).get("labels") or {}
    if target:
        return labels.get(_deployments.LABEL_TARGET) == target
    return _deployments.LABEL_TARGET in labels


def _token(cfg) -> str | None:
    if not cfg.auth_token_file:
        return None
    token = _deployments.read_token(cfg.auth_token_file)
    if not token:
        raise InvalidInputError(f"auth_token_file {cfg.auth_token_file!r} is empty")
    return token
