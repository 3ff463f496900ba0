"""ORT graph optimisation (saved at the portable 'basic' level) and optional int8 quantisation.

Hardware-specific levels ('extended', 'all') are applied only when a session is created, never
saved: a saved 'all' graph can contain CPU-specific fused ops.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from mlflow_deploy_plugins.core.session import make_session, session_options
from mlflow_deploy_plugins.errors import ConversionError

_logger = logging.getLogger(__name__)

SAVED_LEVEL = "basic"


@dataclass
class VariantStats:
    size_bytes: int
    latency_ms_1_row: float | None = None
    latency_ms_100_rows: float | None = None


@dataclass
class OptimizationReport:
    """Size and latency of the converter's graph (``before``: loaded at the saved level, the
    session the conversion already holds) and of the saved graph as served (``after``: level
    ``all``), both on one intra-op thread."""

    level: str
    onnxruntime_version: str
    quantized: bool
    before: VariantStats
    after: VariantStats
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        out = {}
        for key, stats in (("before", self.before), ("after", self.after)):
            for name, value in asdict(stats).items():
                if value is not None:
                    out[f"optimization.{key}.{name}"] = float(value)
        return out


@dataclass
class LoadedGraph:
    """A graph loaded once: the one session over its bytes serves the load check, the saved
    optimisation and the latency measurement (a conversion builds one session per graph)."""

    data: bytes
    session: ort.InferenceSession
    #: the graph after onnxruntime's optimisations at ``SAVED_LEVEL``: what is saved
    optimized: onnx.ModelProto

    def same_graph(self, model: onnx.ModelProto) -> bool:
        """``model`` is still the graph this session was built from (not edited since)."""
        return model.SerializeToString() == self.data


def load_graph(model: onnx.ModelProto, level: str = SAVED_LEVEL) -> LoadedGraph:
    """Load ``model`` into onnxruntime once, optimised at ``level``; one intra-op thread (the
    latency measurement's setting, and no slower for the gate on a shared machine).

    Raises:
        ConversionError: onnxruntime cannot load the graph.
    """
    data = model.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        opts = session_options(level, intra_op_threads=1)
        opts.optimized_model_filepath = out
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConversionError(f"onnxruntime cannot load the converted model: {e}") from e
        return LoadedGraph(data=data, session=session, optimized=onnx.load(out))


def served_session(model: onnx.ModelProto):
    """The one session over the graph that is saved, as the runtime serves it (level ``all``),
    on one intra-op thread: the gate, the reference sample and the latency use it."""
    return make_session(model.SerializeToString(), level="all", intra_op_threads=1)


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 weight quantisation (MatMul/Gemm); trees and encoders are left as they are."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        except Exception as e:
            raise ConversionError(f"int8 quantisation failed: {e}") from e
        return onnx.load(dst)


def measure(session, size_bytes: int, feed_for, repeats: int = 50) -> VariantStats:
    """``size_bytes`` and median latency for 1 and 100 rows on ``session`` (one intra-op
    thread); ``feed_for(n)`` builds a feed of n rows."""
    stats = VariantStats(size_bytes=size_bytes)
    for rows, attr in ((1, "latency_ms_1_row"), (100, "latency_ms_100_rows")):
        feed = feed_for(rows)
        if feed is None:
            continue
        session.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        setattr(stats, attr, float(np.median(times) * 1000))
    return stats


def make_report(level, quantized, before, after, notes=()) -> OptimizationReport:
    return OptimizationReport(
        level=level,
        onnxruntime_version=ort.__version__,
        quantized=quantized,
        before=before,
        after=after,
        notes=list(notes),
    )
