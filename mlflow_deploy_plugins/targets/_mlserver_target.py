"""The lifecycle of the ``mlserver`` target (create, update, delete, list, get, predict,
run-local) over one model repository; the target's client delegates every call here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow_deploy_plugins.core.constants import MLSERVER_INVOCATIONS
from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _mlserver_process, _predict
from mlflow_deploy_plugins.targets._mlserver_repo import (
    Repository,
    RepositoryApi,
    RepositoryApiError,
    model_settings,
    read_json,
    write_json,
)

#: The repository when the target URI names none.
REPOSITORY_ENV = "MLFLOW_DEPLOY_MLSERVER_REPOSITORY"
DEFAULT_REPOSITORY = "~/.mlflow-deploy/mlserver"
#: Which server the repository belongs to (mode, url), beside the models.
SERVER_FILE = "server.json"


def repository_path(given: str | None) -> Path:
    """The repository directory: the target URI's, else ``$MLFLOW_DEPLOY_MLSERVER_REPOSITORY``,
    else ``~/.mlflow-deploy/mlserver``."""
    chosen = given or os.environ.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY
    return Path(os.path.abspath(os.path.expanduser(chosen)))


@dataclass
class MlserverTarget:
    """Deployments of one target in one MLServer model repository."""

    target: str
    flavor: str
    #: The target's ``TargetConfig`` subclass.
    config_class: Any
    root: Path
    progress: Callable[[str], None]

    def __post_init__(self):
        self.repository = Repository(self.root)
        self.local = _mlserver_process.LocalServer(self.root, self.target)

    # ------------------------------------------------------------------------------- calls
    def create_deployment(self, name, model_uri, flavor=None, config=None) -> dict:
        """Write ``model_uri``'s bundle into the repository and load it; blocks until loaded.

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS for an existing name; INVALID_PARAMETER_VALUE
                for bad config, a port in use or MLServer missing (the extra named);
                RESOURCE_DOES_NOT_EXIST for an unknown model; INTERNAL_ERROR with MLServer's
                error when the model fails to load (it is unloaded, the repository unchanged).
        """
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config(config, **self.local.server_config())
        self._check_mode(cfg)
        if self.repository.record(name) is not None:
            raise AlreadyExistsError(
                f"Deployment '{name}' already exists on {self.target} (repository {self.root}): "
                "update it (mlflow deployments update) or delete it first"
            )
        if self.repository.model_dir(name).exists():
            raise AlreadyExistsError(
                f"The repository {self.root} already has a directory '{name}' that this target "
                "did not create (another model of the server?): choose another name"
            )
        api = self._server(cfg)
        try:
            resolved, folder = self._stage(name, model_uri)
        except BaseException:
            self.repository.remove(name)
            self._stop_if_empty(cfg)
            raise
        record = self._record(name, resolved, folder, cfg, api.url)
        self.repository.activate(name, model_settings(name, folder, cfg), record)
        started = time.monotonic()
        try:
            api.load(name)
        except (RepositoryApiError, OSError) as e:
            self._forget(api, name)
            self._stop_if_empty(cfg)
            raise self._load_error(name, e) from None
        self.progress(
            f"Deployment '{name}' loaded in {time.monotonic() - started:.2f} s at "
            f"{api.url}/v2/models/{name}/infer ({resolved.lineage()})"
        )
        return self._describe(name, api)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None) -> dict:
        """Reload ``name`` with ``model_uri`` (default: its model URI, re-resolved) and/or new
        model config. MLServer loads the new version before it drops the old one, so the old
        one answers until then; if the new one fails to load, the old files are put back and
        reloaded, and the error carries MLServer's message."""
        _deployments.check_flavor(flavor, self.target)
        self.config_class.from_config(config)  # bad keys/values fail before anything is read
        old_record = self._existing(name)
        old_cfg = self.config_class.from_config(old_record["config"])
        cfg = self.config_class.from_config({**old_cfg.remembered(), **(config or {})})
        if cfg.mode != old_cfg.mode:
            raise InvalidInputError(
                f"Deployment '{name}' is in mode {old_cfg.mode}; mode cannot change on update "
                "(delete and create it again)"
            )
        old_settings = self.repository.model_settings(name)
        api = self._server(cfg)
        resolved, folder = self._stage(name, model_uri or old_record["model_uri"])
        self.progress(
            f"Updating '{name}': {old_record['labels'].get(_deployments.LABEL_SERVED_NAME)} "
            f"v{old_record['labels'].get(_deployments.LABEL_SERVED_VERSION)} -> "
            f"{resolved.lineage()}"
        )
        record = self._record(name, resolved, folder, cfg, api.url, created=old_record)
        self.repository.activate(name, model_settings(name, folder, cfg), record)
        try:
            api.load(name)
        except (RepositoryApiError, OSError) as e:
            error = self._load_error(name, e)
            self.repository.restore(name, old_settings, old_record)
            shutil.rmtree(self.repository.model_dir(name) / folder, ignore_errors=True)
            try:  # MLServer kept the old instance; reload it so its routes are its own again
                api.load(name)
            except (RepositoryApiError, OSError) as again:
                error = _deployments.DeploymentError(
                    f"{error.summary}; reloading the previous version failed too: {again}",
                    logs=error.logs,
                )
            raise error from None
        self.repository.prune(name, keep=folder)
        self.progress(f"Deployment '{name}' now serves {resolved.lineage()}")
        return self._describe(name, api)

    def delete_deployment(self, name, config=None) -> None:
        """Unload ``name`` and remove its directory; no error when absent. In mode local the
        server stops with its last deployment."""
        self.config_class.from_config(config)
        record = self.repository.record(name)
        if record is None:
            return
        cfg = self.config_class.from_config(record["config"])
        api = self._api()
        if api is not None and api.live():
            self._forget(api, name)
        else:
            self.repository.remove(name)
        self.progress(f"Deployment '{name}' removed from {self.root}")
        self._stop_if_empty(cfg)

    def list_deployments(self) -> list[dict]:
        """Every deployment in the repository, with MLServer's state of each."""
        api = self._api()
        index = _index(api)
        return [self._describe(name, api, index) for name in self.repository.names()]

    def get_deployment(self, name) -> dict:
        """The deployment ``name`` as ``list_deployments`` describes it.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when there is none.
        """
        self._existing(name)
        return self._describe(name, self._api())

    def predict(self, deployment_name, inputs):
        """Score ``inputs`` (as onnx-docker's ``predict``) on the deployment's model."""
        info = self.get_deployment(deployment_name)
        if info["status"] == "UNAVAILABLE":
            raise _deployments.DeploymentError(
                f"Deployment '{deployment_name}': no MLServer answers at {info['endpoint_url']}"
                + (
                    f"; `mlflow deployments update -t {self.target}:{self.root} --name "
                    f"{deployment_name}` starts it again"
                    if info["config"].get("mode") == "local"
                    else ""
                )
            )
        if info["status"] != "READY":
            raise _deployments.DeploymentError(
                f"Deployment '{deployment_name}' is {info['status']} in MLServer, not READY"
                + (f": {info['reason']}" if info.get("reason") else "")
            )
        return _predict.predict(
            deployment_name,
            info["endpoint_url"],
            inputs,
            served_model=deployment_name,
            invocations_path=MLSERVER_INVOCATIONS.format(name=deployment_name),
        )

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: a fresh MLServer with only this model (``/invocations`` too) on
        ``-C port``, its log on stderr until Ctrl+C; then stopped and its files removed."""
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config(config)
        if cfg.mode != "local":
            raise InvalidInputError("run-local runs a local MLServer: leave -C mode out")
        _mlserver_process.require_mlserver(self.target)
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-mlserver-") as work:
            local = MlserverTarget(
                self.target, self.flavor, self.config_class, Path(work), self.progress
            )
            server = local.local
            api = RepositoryApi(server.ensure(cfg, self.progress), timeout=cfg.ready_timeout)
            try:
                resolved, folder = local._stage(name, model_uri)
                settings = model_settings(name, folder, cfg, root_invocations=True)
                record = local._record(name, resolved, folder, cfg, api.url)
                local.repository.activate(name, settings, record)
                try:
                    api.load(name)
                except (RepositoryApiError, OSError) as e:
                    raise local._load_error(name, e) from None
                self.progress(
                    f"Serving '{name}' ({resolved.lineage()}) at {api.url}; Ctrl+C stops it"
                )
                _follow(server)
            except KeyboardInterrupt:
                self.progress(f"Stopping '{name}'")
            finally:
                server.stop(cfg.stop_timeout)

    # ------------------------------------------------------------------------------ helpers
    def _existing(self, name) -> dict:
        record = self.repository.record(name)
        if record is None:
            raise _deployments.DeploymentNotFoundError(
                f"No deployment named '{name}' on {self.target} (repository {self.root}; "
                f"deployments there: {', '.join(self.repository.names()) or 'none'})"
            )
        return record

    def _check_mode(self, cfg) -> None:
        """One repository belongs to one server: refuse a mode or url it is not used with."""
        state = read_json(self.local.state / SERVER_FILE)
        if (
            state
            and self.repository.names()
            and (
                state.get("mode") != cfg.mode
                or (cfg.mode == "remote" and state.get("url") != cfg.url)
            )
        ):
            raise InvalidInputError(
                f"Repository {self.root} serves deployments of mode {state.get('mode')}"
                f"{' at ' + str(state.get('url')) if state.get('mode') == 'remote' else ''}; "
                "use another repository (target URI mlserver:/<directory>) for this one"
            )

    def _server(self, cfg) -> RepositoryApi:
        """The repository API of the server for ``cfg``: ours started when needed (local), or
        the one at ``-C url`` checked live (remote)."""
        if cfg.mode == "remote":
            if not cfg.url:
                raise InvalidInputError(
                    "-C mode=remote needs -C url=http://HOST:PORT of the MLServer"
                )
            api = RepositoryApi(cfg.url.rstrip("/"), timeout=cfg.ready_timeout)
            if not api.live():
                raise _deployments.EngineUnavailableError(
                    f"No MLServer answers at {api.url} (GET /v2/health/live failed)"
                )
        else:
            _mlserver_process.require_mlserver(self.target)
            self.root.mkdir(parents=True, exist_ok=True)
            api = RepositoryApi(self.local.ensure(cfg, self.progress), timeout=cfg.ready_timeout)
        self.local.state.mkdir(parents=True, exist_ok=True)
        write_json(self.local.state / SERVER_FILE, {"mode": cfg.mode, "url": api.url})
        return api

    def _api(self) -> RepositoryApi | None:
        """The repository API of the server this repository belongs to (None: never used)."""
        state = read_json(self.local.state / SERVER_FILE)
        return RepositoryApi(state["url"]) if state and state.get("url") else None

    def _stage(self, name, model_uri):
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
            return resolved, self.repository.stage_bundle(name, resolved)

    def _record(self, name, resolved, folder, cfg, url, created=None) -> dict:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return {
            "name": name,
            "model_uri": resolved.model_uri,
            "labels": resolved.labels(),
            "config": cfg.remembered(),
            "bundle": folder,
            "url": url,
            "created_at": (created or {}).get("created_at", now),
            "updated_at": now,
        }

    def _forget(self, api: RepositoryApi, name) -> None:
        """Unload ``name`` (when loaded) and remove its directory."""
        # the directory goes anyway: MLServer cannot load it again
        with contextlib.suppress(RepositoryApiError, OSError):
            api.unload(name)
        self.repository.remove(name)

    def _stop_if_empty(self, cfg) -> None:
        if cfg.mode == "local" and not self.repository.names() and self.local.pid() is not None:
            self.local.stop(cfg.stop_timeout)
            self.progress(f"MLServer of {self.root} stopped (no deployments left)")

    def _load_error(self, name, error) -> _deployments.DeploymentError:
        text = error.message if isinstance(error, RepositoryApiError) else str(error)
        logs = self.local.tail() if self.local.pid() is not None else ""
        return _deployments.DeploymentError(f"MLServer could not load '{name}': {text}", logs=logs)

    def _describe(self, name, api, index=None) -> dict:
        record = self.repository.record(name) or {}
        if index is None:
            index = _index(api)
        entry = index.get(name) if index is not None else None
        status = (
            entry.get("state", "UNKNOWN")
            if entry
            else ("UNAVAILABLE" if index is None else "NOT_LOADED")
        )
        url = api.url if api is not None else record.get("url", "")
        return {
            "name": name,
            "flavor": self.flavor,
            "target": self.target,
            "status": status,
            "reason": (entry or {}).get("reason") or "",
            "endpoint_url": url,
            "infer_url": f"{url}/v2/models/{name}/infer",
            "invocations_url": url + MLSERVER_INVOCATIONS.format(name=name),
            "repository": str(self.root),
            "created_at": record.get("created_at"),
            "updated_at": record.get("updated_at"),
            "config": record.get("config", {}),
            **_deployments.describe_lineage(record.get("labels", {})),
        }


def _index(api: RepositoryApi | None) -> dict | None:
    """MLServer's index, or None when the server does not answer."""
    if api is None:
        return None
    try:
        return api.index()
    except (RepositoryApiError, OSError):
        return None


def _follow(server: _mlserver_process.LocalServer) -> None:
    """Copy the server's log to stderr until it exits (Ctrl+C interrupts)."""
    import sys

    with open(server.log_file, "rb") as log:
        log.seek(0, os.SEEK_END)
        while server.pid() is not None:
            chunk = log.read()
            if chunk:
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
            else:
                time.sleep(0.2)
