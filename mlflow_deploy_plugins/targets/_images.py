"""Serving images: base-image probe, offline wheels, Dockerfile, streamed docker-SDK build.

Python dependencies are resolved and downloaded as wheels ON THE HOST (the host's pip settings,
mirrors and certificates apply; the build itself needs no network) for the base image's own
Python and platform, then installed with ``--no-index`` in a build stage. The final stage holds
one venv (the ``serve`` extra pinned to the host's versions, so the onnxruntime that passed the
parity gate is the one served, plus this package ``--no-deps``) and the serving bundle.
An image is tagged with a hash of everything that goes into it: an unchanged bundle reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow_deploy_plugins.core.constants import DIST_NAME, PACKAGE
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _deployments as D

_logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

RUNTIME_EXTRA = "serve"
#: Bump when the Dockerfile template changes meaning (part of every image's content hash).
TEMPLATE_VERSION = "1"
VENV = "/opt/venv"
BUNDLE_DIR = "/opt/ml/model"
CONTAINER_PORT = 8080
DEFAULT_USER = "10001:10001"
LOCK_FILE = "requirements.lock"

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


class ImageBuildError(D.DeploymentError):
    """``docker build`` failed; ``logs`` holds its last output lines."""


@dataclass(frozen=True)
class ImagePlatform:
    """Where the wheels must run: the base image's Python and pip platform tags."""

    python_version: str  # "3.11"
    platform_tags: tuple[str, ...]  # most specific first

    @property
    def machine(self) -> str:
        found = _MACHINE.search(self.platform_tags[0]) if self.platform_tags else None
        return found.group(1) if found else "x86_64"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    size: int
    base_size: int
    cached: bool
    seconds: float

    @property
    def added_mb(self) -> float:
        return (self.size - self.base_size) / 1e6


# --- the base image ----------------------------------------------------------------------------


def manylinux_tags(glibc: tuple[int, int], machine: str) -> tuple[str, ...]:
    """Every manylinux tag a glibc ``glibc`` accepts, newest first (pip 23 does not expand
    ``manylinux_2_36`` to older tags when downloading for another platform)."""
    major, minor = glibc
    tags = []
    for m in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{m}_{machine}")
        legacy = _MANYLINUX_LEGACY.get((major, m))
        if legacy:
            tags.append(f"{legacy}_{machine}")
    return tuple(tags)


def parse_platform(tag: str) -> tuple[str, ...]:
    """``-C platform=manylinux_2_28_x86_64`` -> that tag and every older manylinux tag."""
    match = _PLATFORM_TAG.match(tag.strip())
    if match:
        return manylinux_tags((int(match.group(1)), int(match.group(2))), match.group(3))
    return (tag.strip(),)


def ensure_base_image(client, base_image: str, progress: Progress):
    """The base image object; pulled when missing locally."""
    import docker.errors

    try:
        return client.images.get(base_image)
    except docker.errors.ImageNotFound:
        pass
    progress(f"Pulling base image {base_image}")
    try:
        return client.images.pull(base_image)
    except docker.errors.APIError as e:
        raise InvalidInputError(
            f"Base image {base_image!r} is not present locally and could not be pulled "
            f"({e.explanation or e}); build or load it first, or choose another with "
            "-C base_image=..."
        ) from e


def probe_platform(
    client,
    base_image,
    *,
    python_version: str | None = None,
    platform: str | None = None,
) -> ImagePlatform:
    """Python version and pip platform tags of ``base_image`` (a docker Image), found by running
    it once, unless both are given. Cached per image id."""
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


# --- the lock and the wheels -----------------------------------------------------------------


def runtime_lock(target: ImagePlatform) -> list[str]:
    """``name==version`` for the ``serve`` extra and its dependencies, pinned to the versions
    installed on this host, with environment markers evaluated for the image's platform."""
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

    def requirements(dist_name: str, extra: str | None) -> list:
        found = []
        for text in importlib.metadata.distribution(dist_name).requires or []:
            req = Requirement(text)
            if req.marker is None:
                if extra is None:
                    found.append(req)
            elif extra is None:
                if req.marker.evaluate(env | {"extra": ""}):
                    found.append(req)
            elif req.marker.evaluate(env | {"extra": extra}) and not req.marker.evaluate(
                env | {"extra": ""}
            ):
                found.append(req)
        return found

    pins: dict[str, str] = {}
    queue = requirements(DIST_NAME, RUNTIME_EXTRA)
    if not queue:
        raise InvalidInputError(
            f"The installed {DIST_NAME} declares no '{RUNTIME_EXTRA}' extra: its metadata is "
            "stale, reinstall it (pip install -e . from a source tree)"
        )
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError as e:
            raise InvalidInputError(
                f"The serving runtime needs {req}, which is not installed on this host (images "
                f"pin the host's versions): pip install '{DIST_NAME}[{RUNTIME_EXTRA}]'"
            ) from e
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise InvalidInputError(
                f"The serving runtime needs {req}; this host has {req.name} {version}"
            )
        pins[name] = version
        queue.extend(requirements(req.name, None))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mlflow-deploy")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def download_wheels(
    lock: list[str], target: ImagePlatform, cache_dir: str, progress: Progress
) -> str:
    """A directory holding one wheel per lock line for ``target``, downloaded once per lock
    (the cache key) with the host's pip."""
    key = _digest(lock, target.python_version, target.platform_tags)[:16]
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
            raise D.DeploymentError(
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


def _package_dir() -> str:
    import mlflow_deploy_plugins

    return os.path.dirname(os.path.abspath(mlflow_deploy_plugins.__file__))


def _package_files(package_dir: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(root, n) for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def package_hash() -> str:
    """Hash of this package's installed files and version: the key of its cached wheel."""
    package_dir = _package_dir()
    digest = hashlib.sha256(importlib.metadata.version(DIST_NAME).encode())
    for path in _package_files(package_dir):
        digest.update(os.path.relpath(path, package_dir).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _source_tree() -> str | None:
    """The project directory when this package runs from its source tree (editable install)."""
    root = os.path.dirname(_package_dir())
    try:
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    return root if re.search(rf'^name\s*=\s*"{DIST_NAME}"', text, re.MULTILINE) else None


def package_wheel(cache_dir: str, progress: Progress) -> str:
    """A wheel of this package (installed ``--no-deps`` in images), cached per content hash.

    Built with ``pip wheel --no-deps`` from a copy of the source tree when there is one (so the
    tree itself is never written to), else assembled from the installed files."""
    key = package_hash()[:16]
    out = os.path.join(cache_dir, "wheels", f"package-{key}")
    existing = [n for n in os.listdir(out) if n.endswith(".whl")] if os.path.isdir(out) else []
    if existing:
        return os.path.join(out, existing[0])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".package-", dir=os.path.dirname(out))
    try:
        wheel = None
        tree = _source_tree()
        if tree is not None:
            wheel = _pip_wheel(tree, tmp)
        if wheel is None:
            wheel = assemble_wheel(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.isdir(out):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return package_wheel(cache_dir, progress)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"Package wheel: {os.path.basename(wheel)}")
    _prune(os.path.dirname(out), "package-", keep=5)
    return os.path.join(out, os.path.basename(wheel))


def _prune(parent: str, prefix: str, keep: int) -> None:
    """Remove all but the ``keep`` newest ``prefix*`` cache entries (an editable install makes
    a new package wheel per edit)."""
    entries = [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]
    entries.sort(key=os.path.getmtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _pip_wheel(tree: str, out_dir: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-src-") as copy:
        for name in ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE"):
            if os.path.isfile(os.path.join(tree, name)):
                shutil.copy2(os.path.join(tree, name), copy)
        shutil.copytree(
            os.path.join(tree, PACKAGE),
            os.path.join(copy, PACKAGE),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        done = subprocess.run(
            [*cmd, "--disable-pip-version-check", "--wheel-dir", out_dir, copy],
            capture_output=True,
            text=True,
            check=False,
        )
    wheels = [n for n in os.listdir(out_dir) if n.endswith(".whl")]
    if done.returncode != 0 or len(wheels) != 1:
        _logger.info(
            "pip wheel of %s failed, assembling the wheel from the installed files: %s",
            tree,
            done.stderr.strip()[-500:],
        )
        for name in wheels:
            os.remove(os.path.join(out_dir, name))
        return None
    return os.path.join(out_dir, wheels[0])


def assemble_wheel(out_dir: str) -> str:
    """Write a pure-Python wheel of the installed package (its files + metadata) to ``out_dir``."""
    import base64

    dist = importlib.metadata.distribution(DIST_NAME)
    version = dist.version
    stem = f"{PACKAGE}-{version}"
    info = f"{stem}.dist-info"
    path = os.path.join(out_dir, f"{stem}-py3-none-any.whl")
    package_dir = _package_dir()
    entries: list[tuple[str, bytes]] = []
    for file in _package_files(package_dir):
        with open(file, "rb") as f:
            entries.append((os.path.join(PACKAGE, os.path.relpath(file, package_dir)), f.read()))
    metadata = dist.read_text("METADATA") or (
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
    )
    entries.append((f"{info}/METADATA", metadata.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    wheel_meta = "Wheel-Version: 1.0\nGenerator: mlflow-deploy-plugins\nRoot-Is-Purelib: true\n"
    entries.append((f"{info}/WHEEL", wheel_meta.encode() + b"Tag: py3-none-any\n"))
    record = []
    for name, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            # a fixed timestamp: the same files make the same wheel bytes
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return path


# --- the Dockerfile ----------------------------------------------------------------------------

# The probe reads where the server listens from the same variables the server reads.
_HEALTHCHECK = (
    "import os, urllib.request as r; "
    "h = os.environ.get('MLFLOW_DEPLOY_HOST', '0.0.0.0'); "
    "h = {'0.0.0.0': '127.0.0.1', '': '127.0.0.1', '::': '::1'}.get(h, h); "
    "h = '[' + h + ']' if ':' in h else h; "
    "r.urlopen('http://%s:%s/v2/health/ready' % (h, os.environ.get('MLFLOW_DEPLOY_PORT', "
    f"'{CONTAINER_PORT}')), timeout=2)"
)


def render_dockerfile(base_image: str, package_wheel_name: str, labels: dict[str, str]) -> str:
    """Two stages: wheels -> venv (build), then base + venv + bundle as a non-root user."""
    py = f"{VENV}/bin/python"
    pip = f"{py} -m pip --disable-pip-version-check --no-cache-dir"
    site = f"{VENV}/lib"
    label_lines = " \\\n      ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items())
    )
    healthcheck = json.dumps(["python", "-c", _HEALTHCHECK])
    return f"""\
# Generated by mlflow-deploy-plugins (onnx-docker target); template {TEMPLATE_VERSION}.
FROM {base_image} AS build
COPY wheels/ /tmp/wheels/
# Third-party wheels first: this layer is reused while the lock is unchanged.
RUN python3 -m venv {VENV} \\
 && {pip} install --no-index --no-deps --no-compile --find-links /tmp/wheels \\
      -r /tmp/wheels/{LOCK_FILE} \\
 && find {site} -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {{}} + \\
 && {py} -m compileall -q -j 0 --invalidation-mode unchecked-hash {site}
COPY package/ /tmp/package/
RUN {pip} install --no-index --no-deps --no-compile /tmp/package/{package_wheel_name} \\
 && {pip} uninstall -y pip setuptools wheel \\
 && {py} -m compileall -q --invalidation-mode unchecked-hash {site}/python3*/site-packages/{PACKAGE} \\
 && rm -rf /tmp/package {VENV}/bin/activate* {VENV}/bin/Activate.ps1 {VENV}/bin/pip*

FROM {base_image}
COPY --from=build {VENV} {VENV}
COPY bundle/ {BUNDLE_DIR}/
ENV PATH={VENV}/bin:$PATH \\
    VIRTUAL_ENV={VENV} \\
    HOME=/tmp \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    MLFLOW_DEPLOY_BUNDLE_DIR={BUNDLE_DIR} \\
    MLFLOW_DEPLOY_HOST=0.0.0.0 \\
    MLFLOW_DEPLOY_PORT={CONTAINER_PORT}
USER {DEFAULT_USER}
EXPOSE {CONTAINER_PORT}
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD {healthcheck}
LABEL {label_lines}
ENTRYPOINT ["python", "-m", "mlflow_deploy_plugins.serving"]
CMD ["serve"]
"""


def image_labels(resolved: D.ResolvedModel, base_image: str) -> dict[str, str]:
    """OCI labels (model name, version, source run) plus ours (lineage, sha256)."""
    description = (
        f"ONNX serving image of {resolved.served_name} v{resolved.served_version} "
        f"(sha256 {resolved.sha256})"
    )
    labels = {
        "org.opencontainers.image.title": resolved.served_name,
        "org.opencontainers.image.version": resolved.served_version,
        "org.opencontainers.image.revision": resolved.source_run,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.base.name": base_image,
        D.LABEL_TARGET: "onnx-docker",
        D.LABEL_SHA256: resolved.sha256,
        D.LABEL_SOURCE_MODEL: resolved.source_model,
        D.LABEL_SOURCE_VERSION: resolved.source_version,
        D.LABEL_SOURCE_RUN: resolved.source_run,
        D.LABEL_ONNX_MODEL: resolved.onnx_model,
        D.LABEL_ONNX_VERSION: resolved.onnx_version,
        D.LABEL_SERVED_NAME: resolved.served_name,
        D.LABEL_SERVED_VERSION: resolved.served_version,
    }
    return {k: v for k, v in labels.items() if v}


def default_repository(served_name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", served_name.lower()).strip("-._") or "model"
    return f"mlflow-deploy/{slug}"


# --- the build ---------------------------------------------------------------------------------


def ensure_image(
    client,
    resolved: D.ResolvedModel,
    *,
    base_image: str,
    repository: str | None = None,
    python_version: str | None = None,
    platform: str | None = None,
    cache_dir: str | None = None,
    rebuild: bool = False,
    nocache: bool = False,
    progress: Progress = _logger.info,
) -> BuiltImage:
    """The serving image of ``resolved``: reused when one with the same content hash exists,
    else built (progress streamed as ``step n/m``). ``nocache`` also skips Docker's layer cache
    (benchmarks)."""
    started = time.monotonic()
    cache_dir = cache_dir or default_cache_dir()
    base = ensure_base_image(client, base_image, progress)
    target = probe_platform(client, base, python_version=python_version, platform=platform)
    lock = runtime_lock(target)
    wheel = package_wheel(cache_dir, progress)
    labels = image_labels(resolved, base_image)
    dockerfile = render_dockerfile(base_image, os.path.basename(wheel), labels)
    manifest = {k: v for k, v in resolved.bundle.manifest.raw.items() if k != "created_at"}
    content = _digest(
        TEMPLATE_VERSION,
        dockerfile,
        base.id,
        lock,
        target.python_version,
        target.platform_tags,
        package_hash(),
        manifest,
    )
    tag = f"{repository or default_repository(resolved.served_name)}:{content[:20]}"
    base_size = int(base.attrs.get("Size") or 0)
    if not rebuild:
        existing = _get_image(client, tag)
        if existing is not None:
            built = BuiltImage(tag, existing.id, int(existing.attrs["Size"]), base_size, True, 0.0)
            progress(
                f"Image {tag}: unchanged bundle, reusing it "
                f"({built.size / 1e6:.0f} MB, +{built.added_mb:.0f} MB over the base)"
            )
            return built
    wheels = download_wheels(lock, target, cache_dir, progress)
    labels[D.LABEL_CONTENT_HASH] = content
    labels["org.opencontainers.image.created"] = datetime.now(timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    dockerfile = render_dockerfile(base_image, os.path.basename(wheel), labels)
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-build-") as context:
        _link_tree(wheels, os.path.join(context, "wheels"))
        _link_tree(os.path.dirname(wheel), os.path.join(context, "package"), [wheel])
        _link_tree(resolved.bundle.path, os.path.join(context, "bundle"))
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        image_id = build(client, context, tag, progress, nocache=nocache)
    image = client.images.get(image_id)
    built = BuiltImage(
        tag, image.id, int(image.attrs["Size"]), base_size, False, time.monotonic() - started
    )
    progress(
        f"Image {tag} built in {built.seconds:.1f} s: {built.size / 1e6:.0f} MB "
        f"(+{built.added_mb:.0f} MB over the base {base_image}, {base_size / 1e6:.0f} MB)"
    )
    return built


def _get_image(client, tag: str):
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def _link_tree(src: str, dst: str, only: Iterable[str] | None = None) -> None:
    """Hard-link (else copy) files into the build context: the wheels are large."""
    os.makedirs(dst, exist_ok=True)
    paths = list(only) if only is not None else [os.path.join(src, n) for n in os.listdir(src)]
    for path in paths:
        if not os.path.isfile(path):
            continue
        target = os.path.join(dst, os.path.basename(path))
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def build(client, context: str, tag: str, progress: Progress, *, nocache: bool = False) -> str:
    """``docker build`` through the SDK (no network inside); returns the image id."""
    import docker.errors

    tail: list[str] = []
    image_id = None
    try:
        stream = client.api.build(
            path=context,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            nocache=nocache,
            network_mode="none",
        )
        for chunk in stream:
            if "error" in chunk:
                tail.append(str(chunk["error"]).strip())
                raise ImageBuildError(f"Building image {tag} failed", logs="\n".join(tail[-25:]))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            for line in str(chunk.get("stream", "")).splitlines():
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                del tail[:-50]
                step = _STEP.match(line)
                if step:
                    n, m, instruction = step.groups()
                    progress(f"  step {n}/{m}: {_shorten(instruction)}")
                elif "Using cache" in line:
                    progress("    (cached)")
    except docker.errors.APIError as e:
        raise ImageBuildError(
            f"Building image {tag} failed: {e.explanation or e}", logs="\n".join(tail[-25:])
        ) from e
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id


def _shorten(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def remove_image(client, image_ref: str) -> bool:
    """Remove an image unless a container still uses it; True when removed."""
    import docker.errors

    try:
        client.images.remove(image_ref, noprune=False)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as e:
        if getattr(e, "status_code", None) == 409:  # in use by a container
            _logger.info("Keeping image %s: %s", image_ref, e.explanation)
            return False
        raise
