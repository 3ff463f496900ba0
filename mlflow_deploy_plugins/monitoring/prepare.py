"""Both sides of a drift report, sampled, checked against the model's columns and typed alike.

Data without prediction columns (a Parquet of inputs, a training set as reference) is scored
with the ONNX twin, so predictions are always compared when the model is known.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.schema import ExpectedColumns, compare_columns, conform
from mlflow_deploy_plugins.monitoring.settings import CATEGORICAL, DriftSettings
from mlflow_deploy_plugins.monitoring.sources import Sample, read_sample
from mlflow_deploy_plugins.monitoring.target import MonitoredModel, download_onnx_model

_logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    reference: pd.DataFrame  # exactly the compared columns, typed
    current: pd.DataFrame
    expected: ExpectedColumns  # restricted to the compared columns
    reference_sample: Sample
    current_sample: Sample
    reference_origin: str
    reference_predictions: str  # data | computed | none
    current_predictions: str
    missing: list[str]  # expected columns the current data lacks (intersection=True)
    extra: list[str]  # columns of the current data the model does not have (intersection=True)
    since: datetime | None
    until: datetime | None
    intersection: bool
    coerce: bool
    seconds: float  # time spent reading and checking


def prepare(
    model: MonitoredModel,
    current: Any,
    reference: Any,
    settings: DriftSettings,
    since,
    until,
    columns: list[str] | None,
    intersection: bool,
    coerce: bool,
) -> Prepared:
    """Read, sample and check both sides; raise InvalidInputError naming what is wrong."""
    started = time.perf_counter()
    io = model.io
    if reference is None:
        if model.reference_path is None:
            raise InvalidInputError(model.no_reference_message())
        reference, reference_origin = model.reference_path, f"{model.onnx_model_uri} (stored)"
    else:
        reference_origin = reference if isinstance(reference, str) else "<DataFrame>"
    reference_origin = str(reference_origin)
    ref = read_sample(
        reference, side="reference", sample_size=settings.sample_size, seed=settings.seed, io=io
    )
    everything = ExpectedColumns.from_io(io) if io else ExpectedColumns.from_reference(ref.frame)
    expected = everything
    if columns:
        unknown = [c for c in columns if c not in expected.kinds]
        if unknown:
            raise InvalidInputError(
                f"columns={unknown} are not columns of the model; it has {expected.names}"
            )
        expected = expected.subset(columns)
    text_inputs = {c for c in expected.inputs if expected.kinds[c] == CATEGORICAL}
    cur = read_sample(
        current,
        side="current",
        sample_size=settings.sample_size,
        seed=settings.seed,
        io=io,
        categorical=text_inputs,
        since=since,
        until=until,
    )
    ref_frame, _, _, ref_predictions = _side(
        ref, expected, everything, "reference", model, intersection, coerce
    )
    cur_frame, missing, extra, cur_predictions = _side(
        cur, expected, everything, "current", model, intersection, coerce, like=ref_frame
    )
    shared = [c for c in expected.names if c in ref_frame.columns and c in cur_frame.columns]
    if not shared:
        raise InvalidInputError("The reference and current data share no column to compare")
    if missing or extra:
        _logger.warning("Comparing %s only (missing %s, extra %s)", shared, missing, extra)
    return Prepared(
        reference=ref_frame[shared].reset_index(drop=True),
        current=cur_frame[shared].reset_index(drop=True),
        expected=expected.subset(shared),
        reference_sample=ref,
        current_sample=cur,
        reference_origin=reference_origin,
        reference_predictions=ref_predictions,
        current_predictions=cur_predictions,
        missing=missing,
        extra=extra,
        since=since,
        until=until,
        intersection=intersection,
        coerce=coerce,
        seconds=time.perf_counter() - started,
    )


def _side(
    sample: Sample,
    expected: ExpectedColumns,
    everything: ExpectedColumns,
    side: str,
    model: MonitoredModel,
    intersection: bool,
    coerce: bool,
    like: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str], list[str], str]:
    """``(frame of compared columns, missing, extra, where predictions come from)``."""
    present = list(sample.columns)
    score = _can_score(model, everything, present)
    if score:
        present += [p for p in everything.predictions if p not in present]
    compared, missing, extra = compare_columns(
        present, expected, side, intersection, known=everything.names
    )
    inputs = [c for c in compared if c not in expected.predictions]
    if score:
        inputs += [c for c in model.io.columns if c not in inputs]
    # inputs only the model needs (to score) are type-checked, not required to hold values
    frame = conform(sample.frame, everything.subset(inputs), side, coerce, like, compared)
    predictions = [c for c in compared if c in expected.predictions]
    origin = "none"
    if predictions and score:
        frame = pd.concat([frame, _predict(model, frame, expected)], axis=1)
        origin = "computed"
    elif predictions:
        frame = frame.join(conform(sample.frame, expected.subset(predictions), side, coerce, like))
        origin = "data"
    return frame[compared], missing, extra, origin


def _can_score(model: MonitoredModel, expected: ExpectedColumns, present: list[str]) -> bool:
    """No prediction column at all, every model input there, and the model at hand."""
    return (
        model.io is not None
        and model.onnx_model_uri is not None
        and bool(expected.predictions)
        and not any(p in present for p in expected.predictions)
        and all(c in present for c in model.io.columns)
    )


def _predict(model: MonitoredModel, frame: pd.DataFrame, expected) -> pd.DataFrame:
    from mlflow_deploy_plugins.onnx.convert import build_reference_sample

    with open(download_onnx_model(model), "rb") as f:
        model_bytes = f.read()
    scored = build_reference_sample(model_bytes, model.io, frame, rows=len(frame))
    scored.index = frame.index
    names = [c for c in expected.predictions if c in scored.columns]
    return scored[names]
