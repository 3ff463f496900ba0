"""Which columns a drift report compares, their kind (numeric or categorical) and type checks.

With one of our ONNX models the model's IO contract is the truth: its input columns, plus its
predictions named as in the reference sample stored at promotion (``prediction``,
``prediction_<i>``, ``proba_<class>``). Without one, the reference's columns and dtypes are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, IOSpec, OutputSpec
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.settings import CATEGORICAL, NUMERICAL


def output_columns(io: IOSpec, out: OutputSpec) -> list[str]:
    """Column names an output becomes (what ``onnx.convert.build_reference_sample`` writes)."""
    if out.role == PROBABILITIES:
        width = out.shape[1] if len(out.shape) > 1 and isinstance(out.shape[1], int) else None
        labels = list(io.classes) if io.classes else list(range(width or 0))
        return [f"proba_{c}" for c in labels]
    tail = [d for d in out.shape[1:]]
    width = int(np.prod(tail)) if tail and all(isinstance(d, int) for d in tail) else 1
    return ["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)]


def split_output(io: IOSpec | None, name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """One logged output (raw ONNX values, ``name`` as served) -> named 1-D prediction columns."""
    values = np.asarray(values)
    spec = None if io is None else next((o for o in io.outputs if o.name == name), None)
    if spec is None:  # not described by the model (or no model): keep the served name
        if values.ndim <= 1:
            return {name: values}
        flat = values.reshape(len(values), -1)
        return {f"{name}_{i}": flat[:, i] for i in range(flat.shape[1])}
    values = io.as_source(spec, values)
    names = output_columns(io, spec)
    if spec.role != PROBABILITIES and values.ndim <= 1:
        return {names[0]: values}
    flat = values.reshape(len(values), -1)
    if flat.shape[1] != len(names):
        names = [f"{names[0].rsplit('_', 1)[0]}_{i}" for i in range(flat.shape[1])]
    return {n: flat[:, i] for i, n in enumerate(names)}


@dataclass(frozen=True)
class ExpectedColumns:
    """The columns a report compares, in order, and their kind."""

    inputs: tuple[str, ...]
    predictions: tuple[str, ...]
    kinds: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [*self.inputs, *self.predictions]

    @classmethod
    def from_io(cls, io: IOSpec) -> ExpectedColumns:
        dtypes = io.column_dtypes()
        kinds = {
            c: CATEGORICAL if d in ("string", "bool") else NUMERICAL for c, d in dtypes.items()
        }
        predictions = []
        for out in io.outputs:
            for name in output_columns(io, out):
                if name not in kinds:
                    predictions.append(name)
                    kinds[name] = CATEGORICAL if out.role == LABEL else NUMERICAL
        return cls(tuple(io.columns), tuple(predictions), kinds)

    @classmethod
    def from_reference(cls, reference: pd.DataFrame) -> ExpectedColumns:
        kinds = {c: kind_of(reference[c]) for c in reference.columns}
        predictions = tuple(c for c in reference.columns if is_prediction_name(c))
        inputs = tuple(c for c in reference.columns if c not in predictions)
        return cls(inputs, predictions, kinds)

    def subset(self, columns: Iterable[str]) -> ExpectedColumns:
        keep = set(columns)
        return ExpectedColumns(
            tuple(c for c in self.inputs if c in keep),
            tuple(c for c in self.predictions if c in keep),
            {c: k for c, k in self.kinds.items() if c in keep},
        )


def is_prediction_name(name: str) -> bool:
    return name == "prediction" or name.startswith(("prediction_", "proba_"))


def kind_of(series: pd.Series) -> str:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return CATEGORICAL
    return NUMERICAL


def compare_columns(
    present: Iterable[str],
    expected: ExpectedColumns,
    side: str,
    intersection: bool,
    known: Iterable[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """``(compared, missing, extra)``; raises naming both lists unless ``intersection``.

    ``known``: further columns of the model that are not compared (``columns=`` chose a subset):
    neither missing nor extra.
    """
    present = list(present)
    have = set(present)
    missing = [c for c in expected.names if c not in have]
    known = set(expected.names) | set(known)
    extra = [c for c in present if c not in known]
    compared = [c for c in expected.names if c in have]
    if (missing or extra) and not intersection:
        parts = []
        inputs = [c for c in missing if c in expected.inputs]
        predictions = [c for c in missing if c not in expected.inputs]
        if inputs and predictions:  # the predictions are missing because the inputs are
            parts.append(
                f"missing column(s) {inputs} (without them the model's predictions "
                f"{predictions} cannot be computed either)"
            )
        elif missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"extra column(s) {extra}")
        raise InvalidInputError(
            f"The {side} data has {' and '.join(parts)}; the report compares {expected.names}. "
            "Pass intersection=True (--intersection) to compare only the shared columns."
        )
    if not compared:
        raise InvalidInputError(
            f"The {side} data shares no column with {expected.names} (it has {present[:20]})"
        )
    return compared, missing, extra


def conform(
    frame: pd.DataFrame,
    expected: ExpectedColumns,
    side: str,
    coerce: bool,
    like: pd.DataFrame | None = None,
    compared: Iterable[str] | None = None,
) -> pd.DataFrame:
    """``frame`` restricted to the expected columns, typed by their kind.

    A numeric column holding strings (or a categorical one holding numbers) is an error naming
    the columns unless ``coerce``: then unparsable numbers become NaN and numbers become text.
    Categorical predictions take the dtype of ``like`` (the reference) when that loses nothing,
    so a label logged as 0/1 compares with a reference holding False/True. A predicted label is
    categorical whatever its dtype (int, bool or text classes): only a label whose values cannot
    be the reference's classes (e.g. 0.5, or text against numbers) is refused. Columns in
    ``compared`` (default: all) must hold at least one value.
    """
    out = {}
    changed = []
    for column in expected.names:
        series = frame[column]
        like_column = None if like is None else like.get(column)
        if expected.kinds[column] == NUMERICAL:
            series, ok = _as_numeric(series, coerce)
        elif column in expected.predictions:  # a predicted label: int, bool or text classes
            series, ok = _as_label(series, like_column)
        else:
            series, ok = _as_categorical(series, coerce, like_column)
        if not ok:
            changed.append(f"{column} ({_describe(frame[column])})")
        out[column] = series
    if changed:
        raise InvalidInputError(
            f"Column type changed in the {side} data: {', '.join(changed)} do not match the "
            "model's column types (numbers vs text). Fix the data or pass coerce=True (--coerce) "
            "to convert them (unparsable values become missing)."
        )
    result = pd.DataFrame(out, index=frame.index)
    check = expected.names if compared is None else [c for c in expected.names if c in compared]
    empty = [c for c in check if result[c].isna().all()]
    if empty:
        raise InvalidInputError(
            f"Column(s) {empty} of the {side} data hold only missing values (NaN/null) in the "
            f"{len(result)} rows compared; fix the data or leave them out with columns=[...]"
        )
    return result


def _describe(series: pd.Series) -> str:
    sample = series.dropna().head(3).tolist()
    return f"{series.dtype}, e.g. {sample}"


def _as_numeric(series: pd.Series, coerce: bool) -> tuple[pd.Series, bool]:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(float), True
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series, True
    values = series.dropna()
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(series, errors="coerce").astype(float), True  # None mixed with numbers
    if not coerce:
        return series, False
    return pd.to_numeric(series, errors="coerce").astype(float), True


def _as_categorical(
    series: pd.Series, coerce: bool, like: pd.Series | None
) -> tuple[pd.Series, bool]:
    dtype = series.dtype
    if like is not None and like.dtype != dtype:
        aligned = _align(series, like)
        if aligned is not None:
            return aligned, True
    if pd.api.types.is_bool_dtype(dtype) or like is not None and like.dtype == dtype:
        return series, True
    if pd.api.types.is_numeric_dtype(dtype):
        return (_numbers_as_text(series), True) if coerce else (series, False)
    return series, True


def _as_label(series: pd.Series, like: pd.Series | None) -> tuple[pd.Series, bool]:
    """A predicted label column, typed like the reference's labels (which may be any dtype)."""
    values = series.dropna()
    if pd.api.types.is_float_dtype(series.dtype):  # integers read back as float (NaN, CSV)
        if not (values == values.round()).all():
            return series, False
        series = series.astype("Int64")
    if like is None or like.dtype == series.dtype:
        return series, True
    if pd.api.types.is_bool_dtype(like.dtype) or pd.api.types.is_float_dtype(like.dtype):
        aligned = _align(series, like)
        return (series, False) if aligned is None else (aligned, True)
    if pd.api.types.is_integer_dtype(like.dtype):
        if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype):
            return series.astype(like.dtype if not series.isna().any() else "Int64"), True
        numbers = pd.to_numeric(series, errors="coerce")  # "0"/"1" read as text
        if (
            numbers[series.notna()].notna().all()
            and (numbers.dropna() == numbers.dropna().round()).all()
        ):
            return numbers.astype("Int64"), True
        return series, False
    # text classes in the reference: numbers and booleans compare as their text
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        if values.map(lambda v: str(v) in set(like.dropna().astype(str))).all():
            return series.map(lambda v: None if pd.isna(v) else str(v)), True
        return series, False
    return series, True


def _align(series: pd.Series, like: pd.Series) -> pd.Series | None:
    """``series`` cast to ``like``'s dtype when no value changes, else None."""
    values = series.dropna()
    if pd.api.types.is_bool_dtype(like.dtype):
        if pd.api.types.is_numeric_dtype(series.dtype) and values.isin([0, 1]).all():
            return series.map({0: False, 1: True})
        return None
    if (
        pd.api.types.is_integer_dtype(like.dtype)
        and pd.api.types.is_float_dtype(series.dtype)
        and not series.isna().any()
        and (values == values.round()).all()
    ):
        return series.astype(like.dtype)
    return None


def _numbers_as_text(series: pd.Series) -> pd.Series:
    values = series.dropna()
    if pd.api.types.is_float_dtype(series.dtype) and (values == values.round()).all():
        return series.map(lambda v: None if pd.isna(v) else str(int(v)))
    return series.map(lambda v: None if pd.isna(v) else str(v))
