"""What every converter receives and returns; converters are looked up by source flavor."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import IOSpec

#: opsets used unless the caller asks otherwise: ONNX 17 is served by every onnxruntime >= 1.12.
DEFAULT_OPSET = 17
DEFAULT_ML_OPSET = 3


@dataclass
class SourceModel:
    """A loaded source model version: its native object plus what its MLmodel says."""

    model_uri: str
    flavor: str
    native: Any
    local_path: str
    flavor_conf: dict = field(default_factory=dict)
    pyfunc_predict_fn: str = "predict"
    signature: Any = None
    run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    #: the MLmodel's ``metadata`` (None: not read, e.g. a SourceModel built by hand)
    metadata: dict | None = None


@dataclass
class ConversionOptions:
    """Knobs that change the produced graph: part of the idempotency key."""

    target_opset: int = DEFAULT_OPSET
    ml_opset: int = DEFAULT_ML_OPSET
    #: per-framework extras, e.g. {"torch_exporter": "torchscript"}
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class ConvertedModel:
    onnx_model: onnx.ModelProto
    io: IOSpec
    converter: str
    converter_version: str
    notes: list[str] = field(default_factory=list)
    #: ``optimize.LoadedGraph`` of ``onnx_model`` when the converter already loaded it into
    #: onnxruntime (its load check): ``convert()`` reuses it instead of a second session
    loaded: Any = None


class Converter(Protocol):
    """One per framework. ``flavors`` are the MLmodel flavor keys it handles."""

    flavors: tuple[str, ...]

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        """Convert ``source.native``; ``sample`` shows column names and dtypes."""

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        """What the source predicts on ``sample``, keyed by output role (label/probabilities/value)."""


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
