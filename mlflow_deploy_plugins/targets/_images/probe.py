"""The base image's Python version and pip platform tags, probed by running it once."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from mlflow_deploy_plugins.errors import InvalidInputError

_logger = logging.getLogger(__name__)

# The probe prints what pip needs to pick wheels: the Python version, the machine, the libc.
_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], "
    "'implementation': sys.implementation.name, 'machine': platform.machine(), "
    "'libc': platform.libc_ver()}))"
)
_MANYLINUX_LEGACY = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
_PLATFORM_TAG = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_MACHINE = re.compile(r"(x86_64|aarch64|i686|ppc64le|s390x|armv7l)$")
_PLATFORM_CACHE: dict[tuple, ImagePlatform] = {}


@dataclass(frozen=True)
class ImagePlatform:
    """Where the wheels must run: the base image's Python and pip platform tags."""

    python_version: str  # "3.11"
    platform_tags: tuple[str, ...]  # most specific first

    @property
    def machine(self) -> str:
        """The CPU architecture of the most specific tag (``x86_64`` when none names one)."""
        found = _MACHINE.search(self.platform_tags[0]) if self.platform_tags else None
        return found.group(1) if found else "x86_64"


def manylinux_tags(glibc: tuple[int, int], machine: str) -> tuple[str, ...]:
    """Every manylinux tag a glibc accepts, newest first.

    pip 23 does not expand ``manylinux_2_36`` to older tags when downloading for another
    platform, so the builder passes all of them.

    Args:
        glibc: the (major, minor) glibc version of the image.
        machine: the CPU architecture, e.g. ``x86_64``.

    Returns:
        The tags, most specific first, legacy aliases (``manylinux2014``) included.
    """
    major, minor = glibc
    tags = []
    for m in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{m}_{machine}")
        legacy = _MANYLINUX_LEGACY.get((major, m))
        if legacy:
            tags.append(f"{legacy}_{machine}")
    return tuple(tags)


def parse_platform(tag: str) -> tuple[str, ...]:
    """``-C platform=manylinux_2_28_x86_64`` -> that tag and every older manylinux tag.

    Args:
        tag: a pip platform tag; a non-manylinux one (musllinux) is taken as is.

    Returns:
        The tags pip may download for, most specific first.
    """
    match = _PLATFORM_TAG.match(tag.strip())
    if match:
        return manylinux_tags((int(match.group(1)), int(match.group(2))), match.group(3))
    return (tag.strip(),)


def probe_platform(
    client,
    base_image,
    *,
    python_version: str | None = None,
    platform: str | None = None,
) -> ImagePlatform:
    """Python version and pip platform tags of ``base_image``, cached per image id.

    Args:
        client: a docker SDK client.
        base_image: the base image (a docker ``Image``); run once with ``python3 -c`` unless
            both ``python_version`` and ``platform`` are given.
        python_version: overrides the probed version (``-C python_version=``).
        platform: overrides the probed platform tag (``-C platform=``).

    Returns:
        The platform the image's wheels must be downloaded for.

    Raises:
        InvalidInputError: the image has no usable python3, is not CPython, or is not glibc
            and no platform was given.
    """
    tags = parse_platform(platform) if platform else None
    if python_version and tags:
        return ImagePlatform(python_version, tags)
    key = (base_image.id, python_version, platform)
    if key in _PLATFORM_CACHE:
        return _PLATFORM_CACHE[key]
    import docker.errors

    try:
        raw = client.containers.run(
            base_image.id, ["python3", "-c", _PROBE], remove=True, network_mode="none"
        )
        facts = json.loads(raw.decode().strip().splitlines()[-1])
    except (docker.errors.ContainerError, docker.errors.APIError, ValueError, IndexError) as e:
        raise InvalidInputError(
            f"Could not run python3 in base image {_image_name(base_image)} to find its Python "
            f"version and platform ({e}); give -C python_version= and -C platform=, or use a "
            "base image with python3 (e.g. python:3.11-slim)"
        ) from e
    if facts["implementation"] != "cpython":
        raise InvalidInputError(f"Base image Python is {facts['implementation']}, not CPython")
    libc, version = facts["libc"]
    if not tags:
        if libc != "glibc" or not version:
            raise InvalidInputError(
                f"Base image {_image_name(base_image)} does not use glibc ({libc or 'unknown'}): "
                "give the wheel platform with -C platform=... (e.g. musllinux_1_2_x86_64)"
            )
        glibc = tuple(int(x) for x in version.split(".")[:2])
        tags = manylinux_tags(glibc, facts["machine"])
    result = ImagePlatform(python_version or facts["python"], tags)
    _PLATFORM_CACHE[key] = result
    return result


def _image_name(image) -> str:
    return image.tags[0] if getattr(image, "tags", None) else image.id[:19]
