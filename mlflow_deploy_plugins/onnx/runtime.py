"""onnxruntime sessions and one prediction call, shaped like the source model's outputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from mlflow_deploy_plugins.serving.iospec import IOSpec

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(
    model: bytes | str, level: str = "all", intra_op_threads: int | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, io: IOSpec, feed: Mapping[str, np.ndarray]) -> dict:
    """Run once; return ``role -> array`` reshaped to what the source model returns."""
    names = [o.name for o in io.outputs]
    raw = session.run(names, dict(feed))
    return {o.role: io.as_source(o, arr) for o, arr in zip(io.outputs, raw, strict=True)}
