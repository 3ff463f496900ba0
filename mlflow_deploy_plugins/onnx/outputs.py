"""The converted graph's outputs made to answer as the source does, before the parity gate:
probabilities bounded to [0, 1] (``bounds.py``) and tied top probabilities labelled with the
first class, as the source's argmax (``ties.py``)."""

from __future__ import annotations

import onnx

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.onnx import bounds, ties


def source_like_outputs(
    model: onnx.ModelProto, io: IOSpec, reference: dict
) -> tuple[onnx.ModelProto, list[str]]:
    """``(model, notes)``: ``model`` with its outputs adjusted where the source's outputs on the
    sample (``reference``: role -> values) say it applies, and a note per adjustment."""
    notes = []
    model, clipped = bounds.clip_probabilities(model, io, reference)
    if clipped:
        notes.append(f"probabilities bounded to [0, 1] (Clip on {clipped})")
    model, rebuilt = ties.first_max_labels(model, io, reference)
    if rebuilt:
        notes.append(
            f"'{rebuilt}' is the first class among the top probabilities (ties within "
            f"{ties.EPS:g}), as the source's argmax"
        )
    return model, notes
