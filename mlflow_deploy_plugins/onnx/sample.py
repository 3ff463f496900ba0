"""The validation sample for the parity gate: where it comes from and whether it fits the model.

Order (binding decision): ``sample=`` from the caller; else the dataset the source run logged with
``mlflow.log_input`` when it can be loaded; else a sample of at least ``SYNTHESIZED_ROWS`` rows
synthesized from the logged input example and the signature (ranges, categories), said so in the
report. Zero rows: refuse.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.errors import InvalidInputError

_logger = logging.getLogger(__name__)

#: Below this many rows the gate still runs, but says the evidence is thin.
SMALL_SAMPLE_ROWS = 100
#: Rows synthesized from the input example when no sample and no logged dataset exist.
SYNTHESIZED_ROWS = 1000
#: Numeric ranges seen in the input example are widened by this share of their span.
RANGE_MARGIN = 0.1

HOW_TO_PASS_SAMPLE = (
    "pass sample= (a pandas DataFrame or numpy array of model inputs) to "
    "mlflow_deploy_plugins.promote()/convert(), or --sample PATH (CSV/Parquet/JSON) on the CLI, "
    "or log the training data with mlflow.log_input() / an input_example with the source model"
)


@dataclass
class ResolvedSample:
    frame: pd.DataFrame
    origin: str  # "caller" | "run dataset <name>" | "synthesized from the input example ..."
    notes: list[str] = field(default_factory=list)

    @property
    def small(self) -> bool:
        return len(self.frame) < SMALL_SAMPLE_ROWS


def resolve_sample(source, sample=None) -> ResolvedSample:
    """Return the parity sample for ``source`` (a SourceModel) as a DataFrame."""
    if sample is not None:
        frame = as_frame(sample, source)
        origin = "caller"
    else:
        frame, origin = _from_run_dataset(source)
        if frame is None:
            frame, origin = _from_input_example(source)
    if frame is None or len(frame) == 0:
        where = (
            "the sample given has zero rows"
            if sample is not None
            else (f"{source.model_uri} has no loadable logged dataset and no input example")
        )
        raise InvalidInputError(
            f"No validation data for the parity gate: {where}. To fix it, {HOW_TO_PASS_SAMPLE}."
        )
    frame = check_against_signature(frame, source.signature)
    notes = []
    if origin == "input example":
        frame, origin, note = synthesize(frame, source.signature)
        notes.append(note)
        _logger.warning(note)
    if len(frame) < SMALL_SAMPLE_ROWS:
        _logger.warning(
            "Parity sample has only %d rows (< %d); the gate runs but its evidence is thin",
            len(frame),
            SMALL_SAMPLE_ROWS,
        )
    return ResolvedSample(frame=frame.reset_index(drop=True), origin=origin, notes=notes)


def synthesize(example: pd.DataFrame, signature=None, rows: int = SYNTHESIZED_ROWS, seed: int = 0):
    """A gate sample of ``rows`` rows grown from a (small) input example.

    Numeric columns: uniform over the example's range widened by ``RANGE_MARGIN`` (integers stay
    integers, within the range); booleans: both values; strings: the categories of the example.
    The example's own rows come first. Missing-value rows are added later, where the source
    accepts them (``onnx/missing.py``).

    Returns:
        (frame, origin, note for the report)
    """
    rng = np.random.default_rng(seed)
    n = max(rows - len(example), 0)
    logged = _logged_types(signature)
    columns = {}
    for name in example.columns:
        columns[name] = _synthesized_column(example[name], logged.get(name), n, rng)
    grown = pd.concat([example, pd.DataFrame(columns)], ignore_index=True)
    origin = f"synthesized from the input example ({len(example)} rows)"
    note = (
        f"gate sample synthesized: {len(grown)} rows from the {len(example)}-row input example "
        f"and the signature (numeric ranges widened by {RANGE_MARGIN:.0%}, categories of the "
        f"example); no sample was given and the run logged no loadable dataset. For evidence "
        f"from real data, {HOW_TO_PASS_SAMPLE}"
    )
    return grown, origin, note


def _logged_types(signature) -> dict[str, str]:
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return {}
    return {s.name: str(getattr(s.type, "name", s.type)) for s in signature.inputs.inputs}


def _synthesized_column(col: pd.Series, logged: str | None, n: int, rng) -> np.ndarray:
    present = col.dropna()
    if logged == "boolean" or col.dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    numeric = col.dtype.kind in "iuf" or logged in ("double", "float", "long", "integer")
    if (
        not numeric
        or col.dtype.kind in "OUS"
        and not len(pd.to_numeric(present, "coerce").dropna())
    ):
        categories = present.astype(str).unique() if len(present) else np.array([""])
        return rng.choice(categories, n).astype(object)
    values = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype=np.float64)
    lo, hi = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    if col.dtype.kind in "iu" or logged in ("long", "integer"):
        return rng.integers(int(lo), int(hi) + 1, n).astype(
            col.dtype if col.dtype.kind in "iu" else np.int64
        )
    margin = (hi - lo) * RANGE_MARGIN or max(abs(hi) * RANGE_MARGIN, 1.0)
    out = rng.uniform(lo - margin, hi + margin, n)
    return out.astype(col.dtype) if col.dtype.kind == "f" else out


def as_frame(sample, source=None) -> pd.DataFrame:
    """Accept a DataFrame, a 2-D array, a dict of columns or a file path."""
    if isinstance(sample, pd.DataFrame):
        return sample
    if isinstance(sample, (str, os.PathLike)):
        return read_table(str(sample))
    if isinstance(sample, dict):
        columns = {}
        for key, values in sample.items():
            arr = np.asarray(values)
            if arr.ndim == 2 and arr.shape[1] > 1:  # a named tensor input: one column per slot
                columns.update(zip(tensor_columns(key, arr.shape), arr.T, strict=True))
            else:
                columns[key] = arr.reshape(len(arr)) if arr.ndim == 2 else arr
        return pd.DataFrame(columns)
    arr = np.asarray(sample)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInputError(f"sample must be 2-D (rows x columns), got shape {arr.shape}")
    names = _signature_columns(getattr(source, "signature", None))
    if names is None or len(names) != arr.shape[1]:
        names = [f"f{i}" for i in range(arr.shape[1])]
    return pd.DataFrame(arr, columns=names)


def read_table(path: str) -> pd.DataFrame:
    lower = path.lower()
    if not os.path.exists(path):
        raise InvalidInputError(f"Sample file {path!r} does not exist")
    if lower.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if lower.endswith(".csv"):
        return pd.read_csv(path)
    if lower.endswith((".jsonl", ".ndjson")):
        return pd.read_json(path, lines=True)
    if lower.endswith(".json"):
        return pd.read_json(path, orient="split") if _is_split_json(path) else pd.read_json(path)
    raise InvalidInputError(
        f"Cannot read sample file {path!r}: expected .csv, .parquet, .json or .jsonl"
    )


def _is_split_json(path: str) -> bool:
    import json

    with open(path) as f:
        head = json.load(f)
    return isinstance(head, dict) and "columns" in head and "data" in head


def _signature_columns(signature) -> list[str] | None:
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    if signature.inputs.is_tensor_spec():
        specs = signature.inputs.inputs
        if len(specs) == 1:  # one tensor: MLflow feeds the frame by position, whatever its labels
            return None
        return [c for spec in specs for c in tensor_columns(spec.name, spec.shape)]
    return list(signature.inputs.input_names())


def tensor_columns(name: str, shape) -> list[str]:
    """The table columns of a named tensor input ``[N, k]``: ``name_0`` .. ``name_{k-1}``, or
    ``name`` itself when it holds one value per row (``[N]`` or ``[N, 1]``)."""
    width = shape[1] if len(shape) == 2 else 1
    return [name] if width == 1 else [f"{name}_{i}" for i in range(width)]


def check_against_signature(frame: pd.DataFrame, signature) -> pd.DataFrame:
    """Missing columns and non-numeric values in numeric columns are errors naming the column."""
    names = _signature_columns(signature)
    if names is None:
        return frame
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"The sample is missing column(s) {missing}; the model's signature expects {names}"
        )
    column_specs = () if signature.inputs.is_tensor_spec() else signature.inputs.inputs
    for spec in column_specs:
        col = frame[spec.name]
        logged = str(getattr(spec.type, "name", spec.type))
        if logged in ("double", "float", "long", "integer") and col.dtype.kind in "OUS":
            converted = pd.to_numeric(col, errors="coerce")
            bad = col[converted.isna() & col.notna()]
            if len(bad):
                raise InvalidInputError(
                    f"Column '{spec.name}' was logged as {logged} but the sample holds strings "
                    f"(e.g. {bad.iloc[0]!r}); pass numbers for '{spec.name}'"
                )
            frame = frame.assign(**{spec.name: converted})
    return frame[names]


def _from_run_dataset(source):
    if not source.run_id:
        return None, ""
    try:
        from mlflow.data import get_source
        from mlflow.tracking import MlflowClient

        run = MlflowClient().get_run(source.run_id)
        for ds_input in run.inputs.dataset_inputs if run.inputs else []:
            try:
                local = get_source(ds_input.dataset).load()
                frame = read_table(local)
            except Exception as e:  # unloadable sources are common (code, remote tables)
                _logger.info("Run dataset %s not loadable: %s", ds_input.dataset.name, e)
                continue
            names = _signature_columns(source.signature)
            if names and all(c in frame.columns for c in names):
                frame = frame[names]
            return frame, f"run dataset {ds_input.dataset.name}"
    except Exception as e:
        _logger.info("Could not read the source run's datasets: %s", e)
    return None, ""


def _from_input_example(source):
    try:
        from mlflow.models import Model

        example = Model.load(source.local_path).load_input_example(source.local_path)
    except Exception as e:
        _logger.info("No loadable input example: %s", e)
        return None, ""
    if example is None:
        return None, ""
    return as_frame(example, source), "input example"
