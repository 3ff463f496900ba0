"""A serving bundle on disk -> a verified onnxruntime session (no mlflow, no pandas)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mlflow_deploy_plugins.serving.iospec import IOSpec

_logger = logging.getLogger(__name__)

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
                model_file=raw.get("model_file", "model.onnx"),
                sha256=raw["sha256"],
                io=IOSpec.from_dict(raw["io"]),
                source=raw.get("source") or {},
                onnx_model=raw.get("onnx_model") or {},
                settings=raw.get("settings") or {},
                raw=raw,
            )
        except KeyError as e:
            raise BundleError(f"{path} lacks the key {e.args[0]!r}") from e


def session_options(level: str = "all", intra_op_threads: int | None = None):
    """onnxruntime SessionOptions: CPU, sequential, quiet; ``level`` is disable|basic|extended|all.

    The one place sessions are configured: the serving runtime, the flavor, the parity gate
    and the optimiser all build theirs here.
    """
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def make_session(model, level: str = "all", intra_op_threads: int | None = None):
    """One CPU onnxruntime session over ``model`` (bytes or a path)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        model, session_options(level, intra_op_threads), providers=["CPUExecutionProvider"]
    )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class ServedModel:
    """One onnxruntime session over a verified bundle; ``run`` is the only hot-path call."""

    def __init__(self, bundle_dir: str, intra_op_threads: int = 1):
        self.bundle_dir = bundle_dir
        self.manifest = verify_bundle(bundle_dir)
        self.io = self.manifest.io
        model_path = os.path.join(bundle_dir, self.manifest.model_file)
        digest = self.manifest.sha256
        self.session = make_session(model_path, "all", intra_op_threads)
        self.output_names = [o.name for o in self.io.outputs]
        self._run = self.session.run
        self.input_names = [i.name for i in self.session.get_inputs()]
        _logger.info(
            "Loaded %s v%s (%s, sha256 %s...)",
            self.manifest.name,
            self.manifest.version,
            model_path,
            digest[:12],
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in ``self.output_names`` order."""
        return self._run(self.output_names, feed)

    def warm_up(self) -> None:
        """One tiny inference so the first request does not pay for lazy initialisation."""
        feed = {}
        for binding in self.io.inputs:
            width = len(binding.columns)
            if binding.dtype == "string":
                arr = np.full((1, width), "", dtype=object)
            else:
                arr = np.zeros((1, width), dtype=binding.dtype)
            feed[binding.name] = arr.reshape(-1) if len(binding.shape) == 1 else arr
        try:
            self.run(feed)
        except Exception as e:  # a model may reject zeros (e.g. strings it never saw): not fatal
            _logger.debug("Warm-up inference failed (ignored): %s", e)
