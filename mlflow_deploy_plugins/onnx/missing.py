"""Missing values like the source: which columns it accepts them in, and gate rows that hold them.

The source model is probed at conversion time: rows of the sample with a column set to NaN (a
numeric column) or None (a string column) are passed to its own predict. Where it answers, the
twin must answer the same (the gate gets synthesized rows with missing values); where it raises,
the twin refuses such input too (``IOSpec.accepts_missing``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import IOSpec

_logger = logging.getLogger(__name__)

#: Rows of the sample used to probe the source: whether it raises does not need more (one
#: predict call per column when it refuses missing values in some of them: keep each call small).
PROBE_ROWS = 4
#: At most this many sample rows are copied with missing values into the gate sample.
MISSING_ROWS = 500
#: Share of the accepting cells set missing in each such row (at least one per row).
MISSING_SHARE = 0.3

#: What a missing value (None, NaN) in a string column becomes in the graph's string tensor
#: (``IOSpec.encode_columns``); a category of that name could not be told apart from it.
MISSING_TEXTS = ("None", "nan")
#: Column dtypes a missing value can reach the graph in (int/bool tensors have no NaN).
_CARRIES_MISSING = ("float32", "float64", "string")


def _with_missing(rows: pd.DataFrame, columns: list[str], dtypes: dict) -> pd.DataFrame:
    """``rows`` with every cell of ``columns`` missing (one frame built, not one edit per
    column: the probe runs on every conversion)."""
    blank = set(columns)
    n = len(rows)
    data = {
        c: (
            (np.full(n, None, dtype=object) if dtypes[c] == "string" else np.full(n, np.nan))
            if c in blank
            else rows[c]
        )
        for c in rows.columns
    }
    return pd.DataFrame(data, index=rows.index, columns=rows.columns)


def probe_accepts_missing(
    predict, frame: pd.DataFrame, io: IOSpec, uniform: bool = False
) -> tuple[tuple, list[str]]:
    """Columns whose missing values the source's ``predict(frame)`` accepts, and notes.

    Args:
        predict: the source's predictions on a frame (raises on input it refuses).
        frame: the parity sample.
        io: the twin's IO contract (column dtypes as bound in the graph).
        uniform: the converter knows every column meets the same steps: when the source refuses
            missing values in all columns at once it refuses them in each (no per-column calls).

    Returns:
        (accepting columns in ``io.columns`` order, notes for the report)
    """
    dtypes = io.column_dtypes()
    rows = frame[io.columns].head(PROBE_ROWS)
    if not len(rows):
        return (), []
    columns = list(io.columns)
    if _answers(predict, _with_missing(rows, columns, dtypes)):
        accepted = columns
    elif uniform:
        accepted = []
    else:
        accepted = [c for c in columns if _answers(predict, _with_missing(rows, [c], dtypes))]
    notes = []
    unbindable = [c for c in accepted if dtypes[c] not in _CARRIES_MISSING]
    if unbindable:
        notes.append(
            f"column(s) {unbindable} are bound as integer/bool tensors, which cannot hold a "
            "missing value: the twin refuses missing values there although the source accepts "
            "them"
        )
    accepted = [c for c in accepted if c not in unbindable]
    ambiguous = _ambiguous_categories(accepted, io)
    if ambiguous:
        notes.append(
            f"categorical column(s) {ambiguous} have a category spelled like a missing value "
            f"({', '.join(MISSING_TEXTS)}), which is what a missing value reaches the graph as: "
            "the twin refuses missing values there although the source accepts them"
        )
    accepted = [c for c in accepted if c not in ambiguous]
    refused = [c for c in columns if c not in accepted]
    _logger.info("Source accepts missing values in %s, refuses them in %s", accepted, refused)
    if accepted:
        notes.append(f"source accepts missing values in {accepted}: gated with such rows")
    if refused:
        notes.append(f"source refuses missing values in {refused}: the twin refuses them too")
    return tuple(accepted), notes


def probe_accepts_infinite(predict, frame: pd.DataFrame, io: IOSpec) -> tuple[bool, list[str]]:
    """Whether the source's ``predict(frame)`` answers rows holding +inf in every float column
    (scikit-learn's input validation and XGBoost refuse them), and a note for the report."""
    floats = {c for c, dtype in io.column_dtypes().items() if dtype.startswith("float")}
    rows = frame[io.columns].head(PROBE_ROWS)
    if not floats or not len(rows):
        return False, []
    data = {c: np.full(len(rows), np.inf) if c in floats else rows[c] for c in rows.columns}
    rows = pd.DataFrame(data, index=rows.index, columns=rows.columns)
    if _answers(predict, rows, "infinite values"):
        return True, ["source answers infinite values: the twin answers them too (not gated)"]
    return False, ["source refuses infinite values: the twin refuses them too"]


def _ambiguous_categories(columns: list[str], io: IOSpec) -> list[str]:
    """Columns of ``columns`` whose training categories (``io.extra["categories"]``: LightGBM,
    XGBoost) include a text a missing value becomes on its way into a string tensor."""
    categories = io.extra.get("categories") or {}
    return [c for c in columns if set(MISSING_TEXTS) & {str(v) for v in categories.get(c, ())}]


def _answers(predict, rows: pd.DataFrame, what: str = "missing values") -> bool:
    try:
        predict(rows)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        _logger.debug("The source refuses %s: %s: %s", what, type(e).__name__, e)
        return False
    return True


def missing_value_rows(frame: pd.DataFrame, io: IOSpec, seed: int = 0) -> pd.DataFrame:
    """Copies of sample rows with missing values in the columns the source accepts them in."""
    accepting = [c for c in io.columns if c in io.accepts_missing]
    if not accepting or not len(frame):
        return frame.iloc[:0]
    rng = np.random.default_rng(seed)
    n = min(len(frame), MISSING_ROWS)
    rows = frame.sample(n=n, random_state=seed) if len(frame) > n else frame.copy()
    rows = rows.reset_index(drop=True)
    mask = rng.random((n, len(accepting))) < MISSING_SHARE
    mask[np.arange(n), rng.integers(0, len(accepting), n)] = True  # at least one per row
    dtypes = io.column_dtypes()
    for j, column in enumerate(accepting):
        if dtypes[column] == "string":
            values = rows[column].astype(object).to_numpy(copy=True)
            values[mask[:, j]] = None
        else:
            values = rows[column].to_numpy(dtype=np.float64, copy=True)
            values[mask[:, j]] = np.nan
        rows[column] = values
    return rows
