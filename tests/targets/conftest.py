"""Fixtures of the deployment target tests: a real Docker engine and the local base image.

Without an engine the Docker tests skip with the reason; with CI=true they fail instead, since
CI starts the engine itself (tests/infra/docker.sh) and nothing that can run may be skipped there.
"""

from __future__ import annotations

import pytest
from docker_support import BASE_IMAGE, engine_unavailable, remove_test_images


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client of a running engine (skip or, under CI, fail without one)."""
    try:
        import docker
    except ImportError:
        engine_unavailable("the docker SDK is not installed (pip install '.[docker]')")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        engine_unavailable(f"no Docker engine answers ({e})")
    yield client
    remove_test_images(client)
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The local base image the tests build on (tests/infra/docker.sh makes it)."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        engine_unavailable(f"the local base image {BASE_IMAGE} is missing")
    return BASE_IMAGE
