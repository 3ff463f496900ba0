"""The parity gate: does the ONNX model predict like its source on a validation sample?"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import LABEL, PREDICT_METHODS, IOSpec, SchemaError
from mlflow_deploy_plugins.core.session import run_by_role
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, ParityError

_logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_LABEL_AGREEMENT = 0.999


@dataclass
class Tolerances:
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT

    def __post_init__(self):
        for key in ("atol", "rtol"):
            if not getattr(self, key) >= 0:
                raise InvalidInputError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if not 0 <= self.min_label_agreement <= 1:
            raise InvalidInputError(
                f"min_label_agreement must be in [0, 1], got {self.min_label_agreement!r}"
            )


#: How each output kind is compared (written into the report).
LABEL_METHOD = "label agreement >= min_label_agreement (NaN == NaN)"
VALUE_METHOD = "|onnx - source| <= atol + rtol * |source| per element (NaN == NaN)"


@dataclass
class OutputParity:
    role: str
    name: str
    passed: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    label_agreement: float | None = None
    mismatches: int = 0
    #: the rule applied, or why the output could not be compared
    method: str = ""
    #: the ``predict_method`` values the twin answers with this output
    predict_methods: list[str] = field(default_factory=list)
    #: a failure no tolerance explains (the output cannot be compared, shapes differ)
    structural: str | None = None


@dataclass
class ParityReport:
    variant: str  # which ONNX model was checked: "optimized", "quantized", ...
    rows: int
    sample_origin: str
    tolerances: Tolerances
    outputs: list[OutputParity] = field(default_factory=list)
    small_sample: bool = False
    notes: list[str] = field(default_factory=list)
    #: rows of the sample with a synthesized missing value (columns the source accepts them in)
    missing_value_rows: int = 0
    #: a structural failure of the whole gate (nothing compared, missing-value semantics)
    structural: str | None = None

    @property
    def passed(self) -> bool:
        # zero compared outputs prove nothing: all([]) must not pass a model
        return (
            bool(self.outputs) and self.structural is None and all(o.passed for o in self.outputs)
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def metrics(self, prefix: str = "parity") -> dict[str, float]:
        p = f"{prefix}." if prefix else ""
        out = {f"{p}rows": float(self.rows), f"{p}passed": float(self.passed)}
        out[f"{p}missing_value_rows"] = float(self.missing_value_rows)
        for o in self.outputs:
            for key in ("max_abs_error", "max_rel_error", "label_agreement"):
                value = getattr(o, key)
                if value is not None:
                    out[f"{p}{o.role}.{key}"] = float(value)
        return out

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            if o.structural is not None:
                parts.append(f"{o.role}: not compared ({o.structural})")
            elif o.label_agreement is not None:
                parts.append(f"{o.role}: agreement {o.label_agreement:.4%}")
            else:
                parts.append(
                    f"{o.role}: max abs {o.max_abs_error:.3g}, max rel {o.max_rel_error:.3g}"
                )
        verdict = "PASSED" if self.passed else "FAILED"
        thin = " (small sample)" if self.small_sample else ""
        if not parts:
            parts.append("no output compared")
        nan = f", {self.missing_value_rows} with missing values" if self.missing_value_rows else ""
        return (
            f"parity {verdict} on {self.rows} rows{nan}{thin} [{self.variant}, "
            f"{self.sample_origin}]: " + "; ".join(parts)
        )


def onnx_outputs(session, io: IOSpec, frame: pd.DataFrame, source: str = "") -> dict:
    """``role -> outputs`` of the onnxruntime ``session`` on ``frame``'s rows (one run).

    Raises:
        ConversionError: onnxruntime fails to run the graph converted from ``source`` (the
            estimator's class path) on these rows: a converter limit, not the user's data.
    """
    try:
        feed = io.encode_columns({c: frame[c].to_numpy() for c in io.columns}, n_rows=len(frame))
    except SchemaError as e:
        raise InvalidInputError(f"The rows do not fit the ONNX model's inputs: {e}") from e
    try:
        return run_by_role(session, io, feed)
    except Exception as e:  # onnxruntime's Fail, InvalidArgument, RuntimeException...
        if not source or not type(e).__module__.startswith("onnxruntime"):
            raise
        raise ConversionError(
            f"The ONNX graph converted from {source} fails in onnxruntime on the sample, so it "
            f"cannot be served: {str(e).rstrip('.')}. The converter does not support this "
            "configuration of the model (e.g. a OneHotEncoder with infrequent categories over "
            "several columns); change it, or log an ONNX model of your own"
        ) from e


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    io: IOSpec,
    tolerances: Tolerances,
    *,
    variant: str,
    sample_origin: str,
    small_sample: bool,
    missing_value_rows: int = 0,
) -> ParityReport:
    """Compare every output the twin serves (``io.outputs``) with the source's ``reference``.

    An output served without a source counterpart fails the gate (structurally); so does a
    report with no output at all.
    """
    report = ParityReport(
        variant=variant,
        rows=len(next(iter(reference.values()))) if reference else 0,
        sample_origin=sample_origin,
        tolerances=tolerances,
        small_sample=small_sample,
        missing_value_rows=missing_value_rows,
    )
    if small_sample:
        report.notes.append(f"sample has fewer than 100 rows ({report.rows})")
    methods = _predict_methods(io)
    for out in io.outputs:
        if out.role not in reference or out.role not in candidate:
            side = "source" if out.role not in reference else "ONNX model"
            result = OutputParity(
                role=out.role,
                name=out.name,
                passed=False,
                method="not compared",
                structural=f"the {side} produced no '{out.role}' output to compare; an output "
                "the source cannot produce must not be served (a converter bug: report it with "
                "this parity report)",
            )
        elif out.role == LABEL:
            result = _labels(out.name, reference[out.role], candidate[out.role], tolerances)
        else:
            result = _values(
                out.role, out.name, reference[out.role], candidate[out.role], tolerances
            )
        result.predict_methods = methods.get(out.role, [])
        report.outputs.append(result)
    if not report.outputs:
        report.structural = (
            "no output was compared: the twin serves no output that the source produces "
            f"(source outputs: {sorted(reference) or 'none'}); this model kind's outputs are not "
            "mapped to its predict yet: serve the source model (`mlflow models serve`) until it "
            "converts (docs/conversion.md)"
        )
    return report


def _predict_methods(io: IOSpec) -> dict[str, list[str]]:
    """role -> the ``predict_method`` values that answer with it."""
    by_role: dict[str, list[str]] = {}
    for method in PREDICT_METHODS:
        try:
            by_role.setdefault(io.role_for(method), []).append(method)
        except (SchemaError, IndexError):
            continue
    return by_role


def _labels(name, ref, got, tol: Tolerances) -> OutputParity:
    ref, got = np.asarray(ref).reshape(-1), np.asarray(got).reshape(-1)
    if len(ref) != len(got):
        return _shape_mismatch(LABEL, name, ref, got)
    if ref.dtype.kind in "iufb" and got.dtype.kind in "iufb":
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        same = (ref64 == got64) | (np.isnan(ref64) & np.isnan(got64))
    else:
        same = ref.astype(str) == got.astype(str)
    agreement = float(same.mean()) if len(same) else 1.0
    return OutputParity(
        role=LABEL,
        name=name,
        passed=agreement >= tol.min_label_agreement,
        label_agreement=agreement,
        mismatches=int((~same).sum()),
        method=LABEL_METHOD,
    )


def _shape_mismatch(role, name, ref, got) -> OutputParity:
    return OutputParity(
        role=role,
        name=name,
        passed=False,
        max_abs_error=float("inf"),
        max_rel_error=float("inf"),
        mismatches=len(ref),
        method="not compared",
        structural=f"shape {tuple(np.shape(got))} of the ONNX output differs from the "
        f"source's {tuple(np.shape(ref))}",
    )


def _values(role, name, ref, got, tol: Tolerances) -> OutputParity:
    ref, got = np.asarray(ref), np.asarray(got)
    try:
        ref = ref.astype(np.float64)
        got = got.astype(np.float64)
    except (TypeError, ValueError):
        return _shape_mismatch(role, name, ref, got)
    got = got.reshape(ref.shape) if got.size == ref.size else got
    if got.shape != ref.shape:
        return _shape_mismatch(role, name, ref, got)
    # NaN only where both are NaN counts as agreement (and as no error: |NaN - NaN| is not 0)
    both_nan = np.isnan(ref) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(ref - got))
    scale = np.where(both_nan, 0.0, np.abs(ref))
    # Relative error where it means something: a source value within atol of 0 (a probability
    # of exactly 0) is governed by atol, and dividing by it reported errors like 5e300.
    meaningful = scale > tol.atol
    rel = np.where(meaningful, diff / np.where(meaningful, scale, 1.0), 0.0)
    bad = ~(diff <= tol.atol + tol.rtol * scale)
    bad_rows = bad.reshape(len(ref), -1).any(axis=1) if ref.ndim else bad
    finite = ~np.isnan(diff)
    kind = _kind_mismatch(ref, got) if bad.any() else None
    return OutputParity(
        role=role,
        name=name,
        passed=not bad.any(),
        max_abs_error=_max(diff, finite),
        max_rel_error=_max(np.where(diff > 0, rel, 0.0), finite),
        mismatches=int(np.sum(bad_rows)),
        method=VALUE_METHOD,
        structural=kind,
    )


#: A source output with at most this many distinct integer values is a set of labels.
_DISCRETE_VALUES = 32


def _kind_mismatch(ref: np.ndarray, got: np.ndarray) -> str | None:
    """Labels on one side, continuous scores on the other: no tolerance makes them equal."""
    known = ~np.isnan(ref)
    values = ref[known]
    if not values.size or not np.all(values == np.round(values)):
        return None
    distinct = np.unique(values)
    if len(distinct) > _DISCRETE_VALUES:
        return None
    other = got[known]
    off = ~np.isin(other, distinct)
    if off.mean() <= 0.01:
        return None
    return (
        f"output kinds differ: the source returns the discrete values {distinct[:8].tolist()}, "
        f"the ONNX output gives other values on {off.mean():.1%} of the rows (scores where "
        "labels are expected); the converter maps the wrong graph output to predict: serve the "
        "source model (`mlflow models serve`) until this model kind converts (docs/conversion.md)"
    )


def _max(values: np.ndarray, finite: np.ndarray) -> float:
    """The largest error; NaN (one side NaN) counts as infinitely wrong."""
    if not values.size:
        return 0.0
    if not finite.all():
        return float("inf")
    return float(values.max())


def enforce(report: ParityReport, estimator: str = "the model") -> ParityReport:
    """Raise ParityError naming each failing output; return the report when it passed.

    Args:
        report: the gate's report.
        estimator: the source estimator's class path, named in the refusal.
    """
    if report.passed:
        _logger.info(report.summary())
        return report
    failing = [o for o in report.outputs if not o.passed]
    structural = [o.structural for o in failing if o.structural]
    if report.structural:
        structural.insert(0, report.structural)
    if structural:
        # No tolerance explains these: relaxing atol/rtol would register a wrong model.
        raise ParityError(
            f"The ONNX conversion of {estimator} cannot be verified ({report.variant}): "
            + "; ".join(structural)
            + ". This is structural, not a precision problem: changing atol/rtol/"
            "min_label_agreement does not help.",
            report=report,
        )
    details = []
    for o in failing:
        if o.label_agreement is not None:
            details.append(
                f"'{o.name}' label agreement {o.label_agreement:.4%} < "
                f"{report.tolerances.min_label_agreement:.4%} ({o.mismatches} rows differ)"
            )
        else:
            details.append(
                f"'{o.name}' max abs error {o.max_abs_error:.3g} / max rel error "
                f"{o.max_rel_error:.3g} exceed atol={report.tolerances.atol:g}, "
                f"rtol={report.tolerances.rtol:g} on {o.mismatches} rows"
            )
    raise ParityError(
        f"ONNX model of {estimator} ({report.variant}) does not match its source on "
        f"{report.rows} rows: "
        + "; ".join(details)
        + ". Relax atol/rtol/min_label_agreement only if this precision is acceptable.",
        report=report,
    )


def missing_semantics_failure(report: ParityReport) -> str:
    """The structural reason when only the synthesized missing-value rows fail the gate."""
    failing = ", ".join(f"'{o.name}' ({o.mismatches} rows)" for o in report.outputs if not o.passed)
    return (
        f"missing values are handled differently from the source: {failing} differ on the "
        f"{report.missing_value_rows} synthesized rows with missing values while the rows "
        "without them match. Put an imputer before the estimator (or fill missing values "
        "before predicting and retrain on such data)"
    )
