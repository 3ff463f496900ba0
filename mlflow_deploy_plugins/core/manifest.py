"""The serving bundle's manifest (``bundle.json``): its schema, reader and integrity check.

Written by ``bundle.build_bundle`` (mlflow side), read by the serving runtime and the targets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from mlflow_deploy_plugins.core.constants import MODEL_FILE
from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.core.session import file_sha256

MANIFEST_FILE = "bundle.json"
MANIFEST_SCHEMA_VERSION = 1


class BundleError(ValueError):
    """The bundle directory is missing, incomplete or tampered with."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    model_file: str
    sha256: str
    io: IOSpec
    source: dict = field(default_factory=dict)
    onnx_model: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @classmethod
    def read(cls, bundle_dir: str) -> Manifest:
        path = os.path.join(bundle_dir, MANIFEST_FILE)
        try:
            with open(path, "rb") as f:
                raw = json.loads(f.read())
        except FileNotFoundError as e:
            raise BundleError(f"{bundle_dir!r} is not a serving bundle: no {MANIFEST_FILE}") from e
        except ValueError as e:
            raise BundleError(f"{path} is not valid JSON: {e}") from e
        version = raw.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise BundleError(
                f"{path}: schema_version {version!r} is not supported "
                f"(this runtime reads {MANIFEST_SCHEMA_VERSION})"
            )
        try:
            return cls(
                name=str(raw["name"]),
                version=str(raw.get("version") or "1"),
                model_file=raw.get("model_file", MODEL_FILE),
                sha256=raw["sha256"],
                io=IOSpec.from_dict(raw["io"]),
                source=raw.get("source") or {},
                onnx_model=raw.get("onnx_model") or {},
                settings=raw.get("settings") or {},
                raw=raw,
            )
        except KeyError as e:
            raise BundleError(f"{path} lacks the key {e.args[0]!r}") from e


def verify_bundle(bundle_dir: str) -> Manifest:
    """The bundle's manifest, once its model file is checked against the recorded sha256.

    Raises:
        BundleError: no manifest, no model file, or a model file that is not the one verified.
    """
    manifest = Manifest.read(bundle_dir)
    model_path = os.path.join(bundle_dir, manifest.model_file)
    if not os.path.exists(model_path):
        raise BundleError(f"Bundle {bundle_dir!r} lacks its model file {manifest.model_file}")
    digest = file_sha256(model_path)
    if digest != manifest.sha256:
        raise BundleError(
            f"{model_path} has sha256 {digest}, the manifest records {manifest.sha256}: "
            "refusing to serve a model that is not the one verified"
        )
    return manifest
