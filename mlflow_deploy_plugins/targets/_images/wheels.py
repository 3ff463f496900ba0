"""The runtime's third-party wheels, pinned to the host's versions and downloaded on the host
(its pip settings, mirrors and certificates apply) for the image's Python and platform."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from mlflow_deploy_plugins.core.constants import DIST_NAME
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets._deployments import DeploymentError
from mlflow_deploy_plugins.targets._images.probe import ImagePlatform

_logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: The pinned requirements inside a wheel directory (what the Dockerfile installs with ``-r``).
LOCK_FILE = "requirements.lock"


def content_digest(*parts) -> str:
    """sha256 of JSON-able ``parts``: the key of every cache here (wheels, images)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/mlflow-deploy``, else ``~/.cache/mlflow-deploy``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mlflow-deploy")


def runtime_lock(target: ImagePlatform, extra: str) -> list[str]:
    """``name==version`` for a package extra and its dependencies, pinned to the host's versions.

    Environment markers are evaluated for the image's platform, not the host's. Pinning to the
    host means the onnxruntime that passed the parity gate is the one served.

    Args:
        target: the image's platform.
        extra: the extra(s) of this package the image runs (``serve`` for the ONNX runtime,
            ``serve,grpc`` with the gRPC front end).

    Returns:
        Sorted ``name==version`` lines.

    Raises:
        InvalidInputError: the extra is unknown to the installed metadata, or a requirement is
            missing on the host or installed at a version it does not accept.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {
        "python_version": target.python_version,
        "python_full_version": target.python_version + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": target.machine,
    }

    def requirements(dist_name: str, wanted: str | None) -> list:
        found = []
        for text in importlib.metadata.distribution(dist_name).requires or []:
            req = Requirement(text)
            if req.marker is None:
                if wanted is None:
                    found.append(req)
            elif wanted is None:
                if req.marker.evaluate(env | {"extra": ""}):
                    found.append(req)
            elif req.marker.evaluate(env | {"extra": wanted}) and not req.marker.evaluate(
                env | {"extra": ""}
            ):
                found.append(req)
        return found

    pins: dict[str, str] = {}
    queue = []
    for wanted in extra.split(","):  # "serve,grpc": the union of the extras
        found = requirements(DIST_NAME, wanted)
        if not found:
            raise InvalidInputError(
                f"The installed {DIST_NAME} declares no '{wanted}' extra: its metadata is "
                "stale, reinstall it (pip install -e . from a source tree)"
            )
        queue += found
    extras_done: set[tuple[str, str]] = set()
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        # a requirement's extras (tritonclient[http]) bring their own requirements
        for extra in sorted(req.extras):
            if (name, extra) not in extras_done:
                extras_done.add((name, extra))
                queue.extend(requirements(req.name, extra))
        if name in pins:
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError as e:
            raise InvalidInputError(
                f"The serving runtime needs {req}, which is not installed on this host (images "
                f"pin the host's versions): pip install '{DIST_NAME}[{extra}]'"
            ) from e
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise InvalidInputError(
                f"The serving runtime needs {req}; this host has {req.name} {version}"
            )
        pins[name] = version
        queue.extend(requirements(req.name, None))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def download_wheels(
    lock: list[str], target: ImagePlatform, cache_dir: str, progress: Progress
) -> str:
    """A directory holding one wheel per lock line for ``target``, downloaded once per lock.

    Args:
        lock: ``name==version`` lines (:func:`runtime_lock`).
        target: the platform the wheels are for.
        cache_dir: the cache root (``-C wheel_cache=``).
        progress: receives one line per step.

    Returns:
        The directory, holding the wheels and :data:`LOCK_FILE`.

    Raises:
        DeploymentError: pip failed; ``logs`` holds its last output lines.
    """
    key = content_digest(lock, target.python_version, target.platform_tags)[:16]
    final = os.path.join(cache_dir, "wheels", f"runtime-{key}")
    if os.path.isfile(os.path.join(final, LOCK_FILE)):
        progress(f"Runtime wheels: cached ({final})")
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(final))
    started = time.monotonic()
    progress(
        f"Runtime wheels: downloading {len(lock)} for Python {target.python_version} "
        f"{target.platform_tags[0]} on the host"
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        tmp,
        "--python-version",
        target.python_version,
        "--implementation",
        "cp",
    ]
    for tag in target.platform_tags:
        cmd += ["--platform", tag]
    try:
        done = subprocess.run([*cmd, *lock], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DeploymentError(
                f"pip could not download the runtime wheels for Python {target.python_version} "
                f"{target.platform_tags[0]}: {' '.join(lock)}",
                logs="\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]),
            )
        with open(os.path.join(tmp, LOCK_FILE), "w") as f:
            f.write("\n".join(lock) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use its copy
            if not os.path.isfile(os.path.join(final, LOCK_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"Runtime wheels: downloaded in {time.monotonic() - started:.1f} s")
    return final
