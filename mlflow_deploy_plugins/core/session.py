"""onnxruntime session configuration: the one place sessions are configured (the serving runtime,
the flavor, the parity gate and the optimiser all build theirs here)."""

from __future__ import annotations

import hashlib


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


def run_by_role(session, io, feed) -> dict:
    """Run ``session`` once; return ``role -> array`` shaped like the source model's outputs."""
    names = [o.name for o in io.outputs]
    if not names:  # onnxruntime would run every graph output
        return {}
    raw = session.run(names, dict(feed))
    return {o.role: io.as_source(o, arr) for o, arr in zip(io.outputs, raw, strict=True)}
