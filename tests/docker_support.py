"""Shared by the Docker tests of every target (a uniquely named module: every test folder has a
conftest.py); the engine fixtures are in tests/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

#: Stands in for python:3.11-slim on machines without a registry (tests/infra/docker.sh builds it).
BASE_IMAGE = os.environ.get("MLFLOW_DEPLOY_TEST_BASE_IMAGE", "local/debian-python:bookworm-slim")
#: Every image the tests build goes to this repository (removed at the end of the session).
TEST_REPOSITORY = f"mlflow-deploy-test/run-{uuid.uuid4().hex[:8]}"


def engine_unavailable(reason: str):
    """Skip with the reason; under CI (CI=true) fail, since CI starts the engine itself."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the Docker tests must run (tests/infra/docker.sh)")
    pytest.skip(f"{reason}: start one with `bash tests/infra/docker.sh` (root, Debian docker.io)")


def remove_test_images(client) -> None:
    import docker

    for image in client.images.list(name=TEST_REPOSITORY):
        # an image still used by a container a failed test left stays
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)


def remove_deployment_containers(client, names) -> None:
    """Remove every container a test created for the deployment ``names`` (any state)."""
    import docker

    for name in names:
        for label in ("mlflow_deploy.deployment", "mlflow_deploy.run_local"):
            for container in client.containers.list(all=True, filters={"label": f"{label}={name}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)


def corrupt_bundles(monkeypatch):
    """Make every bundle built from now on record a wrong sha256: the runtime refuses it."""
    from mlflow_deploy_plugins import bundle as bundle_module
    from mlflow_deploy_plugins.core.manifest import MANIFEST_FILE, Manifest

    real = bundle_module.build_bundle

    def broken(model_uri, output_dir, **kwargs):
        built = real(model_uri, output_dir, **kwargs)
        path = os.path.join(output_dir, MANIFEST_FILE)
        raw = json.loads(Path(path).read_text())
        raw["sha256"] = "0" * 64
        Path(path).write_text(json.dumps(raw))
        return bundle_module.Bundle(built.path, Manifest.read(output_dir))

    monkeypatch.setattr(bundle_module, "build_bundle", broken)


class BackgroundClients:
    """Client threads that run while the ``with`` block does (started, given half a second to
    get going, stopped and joined after it): the load a test keeps on a server during an update.
    Subclasses pass the thread targets; a target loops while ``running()``."""

    def __init__(self, *targets, limit_s: float = 120.0):
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit_s
        self._threads = [threading.Thread(target=t) for t in targets]

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self._stop.set()
        for thread in self._threads:
            thread.join()
