"""A serving bundle on disk -> a verified onnxruntime session (no mlflow, no pandas)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np

from mlflow_deploy_plugins.core.manifest import verify_bundle
from mlflow_deploy_plugins.core.session import make_session

_logger = logging.getLogger(__name__)


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
        self.input_names = [i.name for i in self.session.get_inputs()]
        # The session's C++ object directly: the Python wrapper's per-call checks (OrtValue
        # ownership, graph capture, inputs present) cost ~0.5 us per call. onnxruntime's core
        # still refuses unknown names, dtypes and shapes; ``run`` checks the count, so with
        # unknown names refused every input is present.
        raw = getattr(self.session, "_sess", None)
        self._run = (raw if raw is not None else self.session).run
        self._n_inputs = len(self.input_names)
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

    @property
    def lineage_headers(self) -> list[tuple[str, str]]:
        """Where the served file came from, as ``/version`` reports it (``X-Model-*`` headers).

        The body of ``/version`` stays the runtime's version as text, as ``mlflow models serve``
        answers it; the registry version and the runs come from the manifest.
        """
        source, onnx = self.manifest.source, self.manifest.onnx_model
        fields = {
            "X-Model-Name": self.manifest.name,
            "X-Model-Version": self.manifest.version,
            "X-Model-Sha256": self.manifest.sha256,
            "X-Model-Registered-Name": onnx.get("name"),
            "X-Model-Registered-Version": onnx.get("version"),
            "X-Model-Run-Id": onnx.get("run_id"),
            "X-Model-Source-Name": source.get("model_name"),
            "X-Model-Source-Version": source.get("model_version"),
            "X-Model-Source-Run-Id": source.get("run_id"),
        }
        # header values are one line of visible ASCII: anything else is left out, not sent
        return [
            (k, str(v))
            for k, v in fields.items()
            if v not in (None, "") and str(v).isprintable() and str(v).isascii()
        ]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in ``self.output_names`` order."""
        if len(feed) != self._n_inputs:
            missing = sorted(set(self.input_names) - set(feed))
            raise ValueError(f"Required inputs {missing} are missing from the feed")
        return self._run(self.output_names, feed, None)

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
