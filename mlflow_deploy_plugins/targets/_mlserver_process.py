"""The MLServer process of ``-C mode=local``: settings.json from our config, started detached on
127.0.0.1 with the repository we manage, found again by later calls (pid file + liveness), stopped
when its last deployment is deleted. Also the check that MLServer is installed at all."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow_deploy_plugins.core.constants import DIST_NAME
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _endpoints
from mlflow_deploy_plugins.targets._mlserver_repo import SERVER_SETTINGS, read_json, write_json

_logger = logging.getLogger(__name__)

#: Our files beside the models (MLServer only reads model-settings.json files).
STATE_DIR = ".mlserver"
#: The readiness of the server itself (``/v2/health/ready`` waits for every model).
LIVE_PATH = "/v2/health/live"
#: MLServer's server-level keys we set (a running server keeps them until restarted).
SERVER_KEYS = (
    "host",
    "http_port",
    "grpc_port",
    "metrics_port",
    "metrics_endpoint",
    "parallel_workers",
    "debug",
)


class MlserverNotInstalledError(_deployments.DeploymentError):
    """MLServer is not importable in this Python environment."""

    error_code = InvalidInputError.error_code


def require_mlserver(target: str) -> None:
    """Refuse early, naming the extra to install, when MLServer is absent.

    Raises:
        MlserverNotInstalledError: ``mlserver`` cannot be imported.
    """
    try:
        found = importlib.util.find_spec("mlserver") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        found = False
    if not found:
        raise MlserverNotInstalledError(
            f"The {target} target needs MLServer in this Python environment ({sys.executable}): "
            f"pip install '{DIST_NAME}[mlserver]'"
        )


def server_settings(cfg, repository: Path) -> dict:
    """settings.json of a server we start, from the target config."""
    return {
        "host": cfg.host,
        "http_port": cfg.port,
        "grpc_port": cfg.grpc_port or cfg.port + 1,
        "metrics_port": cfg.metrics_port or cfg.port + 2,
        "metrics_endpoint": "/metrics" if cfg.metrics else None,
        "parallel_workers": cfg.parallel_workers,
        "debug": cfg.debug,
        "load_models_at_startup": True,
        "model_repository_root": str(repository),
    }


def check_ports(
    host: str, settings: dict, target: str, keys=("http_port", "grpc_port", "metrics_port")
) -> None:
    """Refuse ports of ``settings`` (server settings) that are taken on ``host``.

    Raises:
        InvalidInputError: naming the port, its key and how to choose others.
    """
    for key in keys:
        if _endpoints.port_in_use(host, settings[key]):
            raise InvalidInputError(
                f"Port {settings[key]} ({key} of the MLServer for {target}) on {host} "
                "is already in use: choose another -C port= (gRPC and metrics take the next "
                "two unless -C grpc_port= / metrics_port= say otherwise)"
            )


def config_of(settings: dict) -> dict:
    """The ``-C`` values of the server settings in ``settings`` (a settings.json we wrote)."""
    found = {
        "host": settings.get("host"),
        "port": settings.get("http_port"),
        "grpc_port": settings.get("grpc_port"),
        "metrics_port": settings.get("metrics_port"),
        "metrics": settings.get("metrics_endpoint") is not None,
        "parallel_workers": settings.get("parallel_workers"),
        "debug": settings.get("debug"),
    }
    return {k: v for k, v in found.items() if v is not None}


class LocalServer:
    """The MLServer process serving ``repository`` (one per repository directory)."""

    def __init__(self, repository: Path, target: str):
        self.repository = repository
        self.target = target
        self.state = repository / STATE_DIR
        self.pid_file = self.state / "server.pid"
        self.log_file = self.state / "server.log"

    def pid(self) -> int | None:
        """The pid of our running server, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if b"start" in cmdline and str(self.repository).encode() in cmdline:
            return pid
        return None

    def url(self) -> str | None:
        settings = read_json(self.repository / SERVER_SETTINGS) or {}
        if "http_port" not in settings:
            return None
        return _endpoints.endpoint_url(settings.get("host", "127.0.0.1"), settings["http_port"])

    def server_config(self) -> dict:
        """The ``-C`` server keys this repository's server was started with (empty: none yet),
        the defaults of later calls: a second deployment joins the server without repeating
        them."""
        return config_of(read_json(self.repository / SERVER_SETTINGS) or {})

    def ensure(self, cfg, progress) -> str:
        """The URL of the running server for ``cfg``, started when none runs.

        Raises:
            InvalidInputError: a port of ``cfg`` is taken, or a server runs on this repository
                with other server settings (they apply to every deployment on it).
            DeploymentError: it did not become live (its last log lines included).
        """
        wanted = server_settings(cfg, self.repository)
        if self.pid() is not None:
            current = read_json(self.repository / SERVER_SETTINGS) or {}
            changed = [k for k in SERVER_KEYS if current.get(k) != wanted[k]]
            if changed:
                shown = ", ".join(f"{k}={current.get(k)!r} (asked {wanted[k]!r})" for k in changed)
                raise InvalidInputError(
                    f"The MLServer of repository {self.repository} already runs with {shown}; "
                    "server settings apply to every deployment on it: keep them, or use another "
                    "repository (target URI mlserver:/<directory>) and port"
                )
            url = _endpoints.endpoint_url(cfg.host, cfg.port)
            if _endpoints.http_ready(url + LIVE_PATH):
                return url
            self.stop(10)  # hung: replaced below
        check_ports(cfg.host, wanted, self.target)
        return self._start(wanted, cfg, progress)

    def _start(self, settings: dict, cfg, progress) -> str:
        self.state.mkdir(parents=True, exist_ok=True)
        write_json(self.repository / SERVER_SETTINGS, settings)
        command = [
            sys.executable,
            "-c",
            "from mlserver.cli import main; main()",
            "start",
            str(self.repository),
        ]
        progress(f"Starting MLServer on {cfg.host}:{cfg.port} (repository {self.repository})")
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.repository),
                start_new_session=True,  # outlives this CLI call; stopped by delete
            )
        self.pid_file.write_text(str(process.pid))
        url = _endpoints.endpoint_url(cfg.host, cfg.port)

        def live() -> bool:
            if process.poll() is not None:
                raise _deployments.DeploymentError(
                    f"MLServer exited with code {process.returncode} while starting",
                    logs=self.tail(),
                )
            return _endpoints.http_ready(url + LIVE_PATH)

        try:
            seconds = _endpoints.wait_until(live, cfg.ready_timeout, what="MLServer")
        except TimeoutError as e:
            self.stop(5)
            raise _deployments.DeploymentError(str(e), logs=self.tail()) from None
        except BaseException:
            self.stop(5)
            raise
        progress(f"MLServer live in {seconds:.1f} s at {url}")
        return url

    def stop(self, timeout_s: float) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``); no error when none runs."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_file.read_bytes()[-20000:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (same process)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
