"""The drift job's tunables: statistical methods, thresholds, sample size, time window.

Evidently is imported only to validate method names; the defaults live in ``defaults.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.defaults import (
    DEFAULT_CAT_METHOD,
    DEFAULT_DRIFT_SHARE,
    DEFAULT_NUM_METHOD,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_THRESHOLD,
)

NUMERICAL, CATEGORICAL = "num", "cat"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class DriftSettings:
    """How two samples are compared. Every field is logged as a param of the monitoring run.

    Attributes:
        num_method: Evidently stat test for numeric columns (e.g. ``wasserstein``, ``ks``, ``psi``).
        cat_method: stat test for categorical columns (e.g. ``jensenshannon``, ``chisquare``).
        threshold: drift threshold of every column's test (a distance above it, or a p-value
            below it for p-value tests, is drift).
        drift_share: the report says "drift" when at least this share of columns drifted.
        per_column_method: ``column -> method`` overrides.
        sample_size: at most this many rows of the current data (and of a given reference) are
            compared: a uniform random sample, streamed.
        seed: seed of that sample (``None``: different every run).
    """

    num_method: str = DEFAULT_NUM_METHOD
    cat_method: str = DEFAULT_CAT_METHOD
    threshold: float = DEFAULT_THRESHOLD
    drift_share: float = DEFAULT_DRIFT_SHARE
    per_column_method: dict[str, str] = field(default_factory=dict)
    sample_size: int = DEFAULT_SAMPLE_SIZE
    seed: int | None = 0

    def validate(self) -> DriftSettings:
        """Raise InvalidInputError naming the bad setting; return self."""
        if not 0 < self.drift_share <= 1:
            raise InvalidInputError(f"drift_share must be in (0, 1], got {self.drift_share}")
        if not self.threshold >= 0:
            raise InvalidInputError(f"threshold must be >= 0, got {self.threshold}")
        if int(self.sample_size) < 1:
            raise InvalidInputError(f"sample_size must be >= 1, got {self.sample_size}")
        checks = [
            ("num_method", self.num_method, NUMERICAL),
            ("cat_method", self.cat_method, CATEGORICAL),
        ]
        checks += [
            (f"per_column_method[{c!r}]", m, None)
            for c, m in sorted(self.per_column_method.items())
        ]
        known = stat_tests()
        for name, method, kind in checks:
            kinds = known.get(method)
            if kinds is None:
                raise InvalidInputError(
                    f"{name}={method!r} is not an Evidently stat test; known: {', '.join(sorted(known))}"
                )
            if kind is not None and kind not in kinds:
                allowed = sorted(m for m, k in known.items() if kind in k)
                raise InvalidInputError(
                    f"{name}={method!r} does not apply to "
                    f"{'numeric' if kind == NUMERICAL else 'categorical'} columns; use one of "
                    f"{', '.join(allowed)}"
                )
        return self

    def method_for(self, column: str, kind: str) -> str:
        if column in self.per_column_method:
            return self.per_column_method[column]
        return self.num_method if kind == NUMERICAL else self.cat_method

    def params(self) -> dict[str, str]:
        out = {
            "num_method": self.num_method,
            "cat_method": self.cat_method,
            "threshold": str(self.threshold),
            "drift_share": str(self.drift_share),
            "sample_size": str(self.sample_size),
            "seed": str(self.seed),
        }
        if self.per_column_method:
            out["per_column_method"] = ",".join(
                f"{c}={m}" for c, m in sorted(self.per_column_method.items())
            )
        return out


def stat_tests() -> dict[str, set[str]]:
    """Evidently's registered stat tests: ``name -> {"num", "cat", ...}`` they apply to."""
    from evidently.legacy.calculations.stattests import registry  # registers every test
    from evidently.legacy.core import ColumnType

    kinds = {ColumnType.Numerical: NUMERICAL, ColumnType.Categorical: CATEGORICAL}
    return {
        name: {kinds.get(t, str(t)) for t in by_type}
        for name, by_type in registry._registered_stat_tests.items()
    }


# ------------------------------------------------------------------ time window
def parse_time(value: datetime | str | None, name: str) -> datetime | None:
    """A UTC datetime from a datetime (naive = UTC) or an ISO 8601 string (``...Z`` allowed)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as e:
            raise InvalidInputError(
                f"{name}={value!r} is not an ISO 8601 time (e.g. 2026-11-27T17:00:00Z)"
            ) from e
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_duration(value: timedelta | str | float | None) -> timedelta | None:
    """``timedelta``, seconds, or text like ``90s``, ``30m``, ``24h``, ``7d``, ``2w``."""
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, int | float):
        duration = timedelta(seconds=value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise InvalidInputError(
                f"window={value!r} is not a duration; use a number and a unit s, m, h, d or w "
                "(e.g. 24h)"
            )
        duration = timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
    if duration <= timedelta(0):
        raise InvalidInputError(f"window must be positive, got {value!r}")
    return duration


def resolve_window(
    since: datetime | str | None,
    until: datetime | str | None,
    window: timedelta | str | float | None,
    now: datetime | None = None,
) -> tuple[datetime | None, datetime | None]:
    """``(since, until)`` in UTC. ``window`` ends at ``until`` (default: now)."""
    since_t, until_t = parse_time(since, "since"), parse_time(until, "until")
    duration = parse_duration(window)
    if duration is not None:
        if since_t is not None:
            raise InvalidInputError("Give either a window or since=, not both")
        until_t = until_t or (now or datetime.now(timezone.utc))
        since_t = until_t - duration
    if since_t is not None and until_t is not None and since_t > until_t:
        raise InvalidInputError(
            f"since ({since_t.isoformat()}) is after until ({until_t.isoformat()})"
        )
    return since_t, until_t
