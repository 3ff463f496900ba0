"""The parity gate: does the ONNX model predict like its source on a validation sample?"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.core.iospec import LABEL, IOSpec, SchemaError
from mlflow_deploy_plugins.core.session import make_session, run_by_role
from mlflow_deploy_plugins.errors import InvalidInputError, ParityError

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


@dataclass
class OutputParity:
    role: str
    name: str
    passed: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    label_agreement: float | None = None
    mismatches: int = 0


@dataclass
class ParityReport:
    variant: str  # which ONNX model was checked: "optimized", "quantized", ...
    rows: int
    sample_origin: str
    tolerances: Tolerances
    outputs: list[OutputParity] = field(default_factory=list)
    small_sample: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def metrics(self, prefix: str = "parity") -> dict[str, float]:
        p = f"{prefix}." if prefix else ""
        out = {f"{p}rows": float(self.rows), f"{p}passed": float(self.passed)}
        for o in self.outputs:
            for key in ("max_abs_error", "max_rel_error", "label_agreement"):
                value = getattr(o, key)
                if value is not None:
                    out[f"{p}{o.role}.{key}"] = float(value)
        return out

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            if o.label_agreement is not None:
                parts.append(f"{o.role}: agreement {o.label_agreement:.4%}")
            else:
                parts.append(
                    f"{o.role}: max abs {o.max_abs_error:.3g}, max rel {o.max_rel_error:.3g}"
                )
        verdict = "PASSED" if self.passed else "FAILED"
        thin = " (small sample)" if self.small_sample else ""
        return f"parity {verdict} on {self.rows} rows{thin} [{self.variant}]: " + "; ".join(parts)


def onnx_outputs(model_bytes: bytes, io: IOSpec, frame: pd.DataFrame, level="disable") -> dict:
    session = make_session(model_bytes, level=level)
    try:
        feed = io.encode_columns({c: frame[c].to_numpy() for c in io.columns}, n_rows=len(frame))
    except SchemaError as e:
        raise InvalidInputError(f"Parity sample does not fit the ONNX inputs: {e}") from e
    return run_by_role(session, io, feed)


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    io: IOSpec,
    tolerances: Tolerances,
    *,
    variant: str,
    sample_origin: str,
    small_sample: bool,
) -> ParityReport:
    report = ParityReport(
        variant=variant,
        rows=len(next(iter(reference.values()))) if reference else 0,
        sample_origin=sample_origin,
        tolerances=tolerances,
        small_sample=small_sample,
    )
    if small_sample:
        report.notes.append(f"sample has fewer than 100 rows ({report.rows})")
    for out in io.outputs:
        if out.role not in reference:
            continue
        ref, got = np.asarray(reference[out.role]), np.asarray(candidate[out.role])
        if out.role == LABEL:
            report.outputs.append(_labels(out.name, ref, got, tolerances))
        else:
            report.outputs.append(_values(out.role, out.name, ref, got, tolerances))
    return report


def _labels(name, ref, got, tol: Tolerances) -> OutputParity:
    ref, got = ref.reshape(-1), got.reshape(-1)
    if ref.dtype.kind in "iufb" and got.dtype.kind in "iufb":
        same = ref.astype(np.float64) == got.astype(np.float64)
    else:
        same = ref.astype(str) == got.astype(str)
    agreement = float(same.mean()) if len(same) else 1.0
    return OutputParity(
        role=LABEL,
        name=name,
        passed=agreement >= tol.min_label_agreement,
        label_agreement=agreement,
        mismatches=int((~same).sum()),
    )


def _values(role, name, ref, got, tol: Tolerances) -> OutputParity:
    ref = ref.astype(np.float64)
    got = got.astype(np.float64).reshape(ref.shape) if got.size == ref.size else got
    if got.shape != ref.shape:
        return OutputParity(
            role=role,
            name=name,
            passed=False,
            max_abs_error=float("inf"),
            max_rel_error=float("inf"),
            mismatches=len(ref),
        )
    diff = np.abs(ref - got)
    # NaN only where both are NaN counts as agreement.
    both_nan = np.isnan(ref) & np.isnan(got)
    diff = np.where(both_nan, 0.0, diff)
    rel = diff / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    bad = ~(diff <= tol.atol + tol.rtol * np.abs(ref))
    bad_rows = bad.reshape(len(ref), -1).any(axis=1) if ref.ndim else bad
    return OutputParity(
        role=role,
        name=name,
        passed=not bad.any(),
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        max_rel_error=float(np.where(diff > 0, rel, 0).max()) if diff.size else 0.0,
        mismatches=int(np.sum(bad_rows)),
    )


def enforce(report: ParityReport) -> ParityReport:
    """Raise ParityError naming each failing output; return the report when it passed."""
    if report.passed:
        _logger.info(report.summary())
        return report
    failing = [o for o in report.outputs if not o.passed]
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
        f"ONNX model ({report.variant}) does not match its source on {report.rows} rows: "
        + "; ".join(details)
        + ". Relax atol/rtol/min_label_agreement if this is acceptable.",
        report=report,
    )
