"""A wheel of this package (installed ``--no-deps`` in every image), cached per content hash."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

from mlflow_deploy_plugins.core.constants import DIST_NAME, PACKAGE

_logger = logging.getLogger(__name__)


def package_hash() -> str:
    """Hash of this package's installed files and version: the key of its cached wheel.

    Returns:
        A sha256 hex digest (part of every image's content hash).
    """
    package_dir = _package_dir()
    digest = hashlib.sha256(importlib.metadata.version(DIST_NAME).encode())
    for path in _package_files(package_dir):
        digest.update(os.path.relpath(path, package_dir).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def package_wheel(cache_dir: str, progress: Callable[[str], None]) -> str:
    """A wheel of this package, cached in ``cache_dir`` per :func:`package_hash`.

    Built with ``pip wheel --no-deps`` from a copy of the source tree when there is one (so the
    tree itself is never written to), else assembled from the installed files.

    Args:
        cache_dir: the cache root (``-C wheel_cache=``).
        progress: receives one line when a wheel is made.

    Returns:
        The path of the wheel.
    """
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


def assemble_wheel(out_dir: str) -> str:
    """Write a pure-Python wheel of the installed package (its files + metadata).

    Args:
        out_dir: where the wheel is written.

    Returns:
        The path of the wheel; the same files always make the same bytes.
    """
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


def _package_dir() -> str:
    import mlflow_deploy_plugins

    return os.path.dirname(os.path.abspath(mlflow_deploy_plugins.__file__))


def _package_files(package_dir: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(root, n) for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def _source_tree() -> str | None:
    """The project directory when this package runs from its source tree (editable install)."""
    root = os.path.dirname(_package_dir())
    try:
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    return root if re.search(rf'^name\s*=\s*"{DIST_NAME}"', text, re.MULTILINE) else None


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
