"""An MLServer model repository we manage (one directory per deployment) and MLServer's
repository API (index, load, unload). No process handling: ``_mlserver_process`` starts servers.

A deployment's directory::

    <repository>/<name>/model-settings.json   what MLServer loads (its uri points at one bundle)
    <repository>/<name>/deployment.json       lineage and config (what list/get report)
    <repository>/<name>/bundle-<id>/          the serving bundle (model.onnx + bundle.json)

Only ``model-settings.json`` files are models to MLServer; old bundles are removed once the new
one answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlflow_deploy_plugins.core.constants import MLSERVER_INVOCATIONS
from mlflow_deploy_plugins.targets import _deployments
from mlflow_deploy_plugins.targets._endpoints import http_ready

_logger = logging.getLogger(__name__)

MODEL_SETTINGS = "model-settings.json"
SERVER_SETTINGS = "settings.json"
DEPLOYMENT_FILE = "deployment.json"
#: ``implementation`` of every model we write.
IMPLEMENTATION = "mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime"


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` atomically (a reader sees the old or the new file, whole)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Repository:
    """The model repository directory (``-C repository=``)."""

    root: Path

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        """Deployments in the repository (directories with our deployment record)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if (p / DEPLOYMENT_FILE).is_file() and p.is_dir()
        )

    def record(self, name: str) -> dict | None:
        """The deployment record of ``name`` (lineage, config, bundle), or None."""
        return read_json(self.model_dir(name) / DEPLOYMENT_FILE)

    def model_settings(self, name: str) -> dict | None:
        return read_json(self.model_dir(name) / MODEL_SETTINGS)

    def stage_bundle(self, name: str, resolved: _deployments.ResolvedModel) -> str:
        """Copy the resolved bundle into ``name``'s directory; returns its directory name."""
        folder = f"bundle-{resolved.sha256[:12]}-{uuid.uuid4().hex[:6]}"
        target = self.model_dir(name) / folder
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(resolved.bundle.path, target)
        return folder

    def activate(self, name: str, model_settings: dict, record: dict) -> None:
        """Point ``name``'s model-settings.json at a staged bundle (record first: list/get
        describe what MLServer would load)."""
        folder = self.model_dir(name)
        write_json(folder / DEPLOYMENT_FILE, record)
        write_json(folder / MODEL_SETTINGS, model_settings)

    def restore(self, name: str, model_settings: dict | None, record: dict | None) -> None:
        """Put back what :meth:`activate` replaced (None: the deployment did not exist)."""
        folder = self.model_dir(name)
        if model_settings is None or record is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        self.activate(name, model_settings, record)

    def prune(self, name: str, keep: str) -> None:
        """Remove ``name``'s bundles other than ``keep`` (after an update answered)."""
        for path in self.model_dir(name).glob("bundle-*"):
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.model_dir(name), ignore_errors=True)


def model_settings(name: str, bundle_folder: str, cfg, *, root_invocations: bool = False) -> dict:
    """The model-settings.json of a deployment, from its config.

    Args:
        name: the deployment (MLServer's model name).
        bundle_folder: the bundle's directory, relative to the model's directory.
        cfg: the target config (batching, threads).
        root_invocations: also answer MLflow's ``/invocations`` (a server with one model).
            With ``parallel_workers`` above 0 no scoring route is registered (V2 only).
    """
    paths = [MLSERVER_INVOCATIONS.format(name=name)] + (
        ["/invocations"] if root_invocations else []
    )
    return {
        "name": name,
        "implementation": IMPLEMENTATION,
        "max_batch_size": cfg.max_batch_size,
        "max_batch_time": cfg.max_batch_time,
        "parameters": {
            "uri": f"./{bundle_folder}",
            "extra": {
                "intra_op_threads": cfg.intra_op_threads,
                "invocations": paths,
            },
        },
    }


class RepositoryApiError(Exception):
    """MLServer's repository API refused a call; ``message`` is MLServer's own text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RepositoryApi:
    """MLServer's model repository API at ``url`` (``http://host:port``)."""

    url: str
    timeout: float = 120.0

    def index(self) -> dict[str, dict]:
        """``{model name: {"state": ..., "reason": ...}}`` of every model MLServer knows."""
        # MLServer 1.7 answers 422 to an index request without a JSON content type and body
        found = self._post("/v2/repository/index", b"{}")
        return {m["name"]: m for m in found or [] if isinstance(m, dict) and "name" in m}

    def load(self, name: str) -> None:
        """Load (or reload: the old instance answers until the new one loaded) ``name``."""
        self._post(f"/v2/repository/models/{name}/load", b"")

    def unload(self, name: str) -> bool:
        """Unload ``name``; False when MLServer did not have it loaded."""
        try:
            self._post(f"/v2/repository/models/{name}/unload", b"")
        except RepositoryApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def live(self) -> bool:
        """Whether the server answers its liveness probe."""
        return http_ready(self.url + "/v2/health/live")

    def _post(self, path: str, body: bytes):
        request = urllib.request.Request(
            self.url + path, body, {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            raise RepositoryApiError(e.code, _error_text(e.read())) from None
        return json.loads(text) if text.strip() else None


def _error_text(body: bytes) -> str:
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
        if isinstance(doc, dict) and "detail" in doc:
            return json.dumps(doc["detail"])[:1000]
    return body.decode(errors="replace")[:1000]
