"""onnxruntime sessions and one prediction call, shaped like the source model's outputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from mlflow_deploy_plugins.serving.iospec import IOSpec
from mlflow_deploy_plugins.serving.model import make_session  # noqa: F401 (re-exported)


def run(session: ort.InferenceSession, io: IOSpec, feed: Mapping[str, np.ndarray]) -> dict:
    """Run once; return ``role -> array`` reshaped to what the source model returns."""
    names = [o.name for o in io.outputs]
    raw = session.run(names, dict(feed))
    return {o.role: io.as_source(o, arr) for o, arr in zip(io.outputs, raw, strict=True)}
