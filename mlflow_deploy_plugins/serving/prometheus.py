"""A tiny Prometheus registry (text exposition format 0.0.4): counters, gauges, histograms.

No prometheus_client: updates are plain attribute and list operations because the event loop is
single-threaded. Metrics also updated from other threads (the payload-log writer) are created with
``threadsafe=True`` and take a lock. With several workers, ``Registry.render`` adds the other
workers' values (``metrics_shared``).
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from mlflow_deploy_plugins.serving.metrics_shared import SharedMetrics, merge

#: The ``Content-Type`` of :meth:`Registry.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Default histogram buckets (seconds): the runtime answers in tens of microseconds to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Joins label values into one JSON key in snapshots (a control character labels never hold).
_SEP = "\x1f"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(int(value))  # int() turns a bool into 1/0
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _split(joined: str, metric: _Metric) -> tuple[str, ...]:
    return tuple(joined.split(_SEP)) if metric.labelnames else ()


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _LockedCounterChild(_CounterChild):
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self.value += amount


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _LockedGaugeChild(_GaugeChild):
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self.value -= amount


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # counts[i] holds observations in (bounds[i-1], bounds[i]]; the last slot is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _Metric:
    type_name = ""
    #: How workers' values combine in a merged snapshot: summed unless "max".
    aggregate: str | None = None

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        # _lookup: the caller's label values (any types) -> child, for cheap repeated lookups;
        # _children: label values as strings -> child, what render() prints.
        self._lookup: dict[tuple[Any, ...], Any] = {}
        self._children: dict[tuple[str, ...], Any] = {}
        self._default = None if labelnames else self.labels()

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: Any) -> Any:
        """The child for these label values (rendered with ``str()``), created on first use."""
        try:
            return self._lookup[values]
        except KeyError:
            pass
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"metric {self.name!r} takes labels {self.labelnames}, got {len(values)} values"
            )
        key = tuple(str(v) for v in values)
        child = self._children.setdefault(key, self._new_child())  # atomic under the GIL
        self._lookup[values] = child
        return child

    def _unlabelled(self) -> Any:
        if self._default is None:
            raise ValueError(f"metric {self.name!r} has labels {self.labelnames}: use labels()")
        return self._default

    def _label_text(self, key: tuple[str, ...], extra: str = "") -> str:
        parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(self.labelnames, key, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def snapshot(self) -> dict[str, Any]:
        """This metric's values as JSON: ``{"type", "children": {labels joined by \\x1f: value}}``."""
        children = {
            _SEP.join(key): self._child_value(child) for key, child in self._children.items()
        }
        snap: dict[str, Any] = {"type": self.type_name, "children": children}
        if self.aggregate:
            snap["aggregate"] = self.aggregate
        return snap

    def _child_value(self, child: Any) -> Any:
        return child.value

    def _render_samples(self, out: list[str], children: dict[str, Any]) -> None:
        for key, value in sorted(children.items()):
            out.append(f"{self.name}{self._label_text(_split(key, self))} {_fmt(value)}")

    def render_into(self, out: list[str], children: dict[str, Any] | None = None) -> None:
        """Append this metric's ``# HELP``, ``# TYPE`` and sample lines to ``out`` (of
        ``children`` from a merged snapshot, else of this process's own values)."""
        if children is None:
            children = self.snapshot()["children"]
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.type_name}")
        self._render_samples(out, children)


class Counter(_Metric):
    """A monotonically increasing count; ``inc()`` when unlabelled, else ``labels(...).inc()``."""

    type_name = "counter"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, threadsafe: bool = False
    ) -> None:
        self._child_type = _LockedCounterChild if threadsafe else _CounterChild
        super().__init__(name, help, labelnames)

    def _new_child(self) -> _CounterChild:
        return self._child_type()

    def inc(self, amount: float = 1) -> None:
        self._unlabelled().inc(amount)

    @property
    def value(self) -> float:
        """The unlabelled counter's value."""
        return self._unlabelled().value


class Gauge(_Metric):
    """A value that goes up and down: ``set``, ``inc``, ``dec``."""

    type_name = "gauge"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, threadsafe: bool = False
    ) -> None:
        self._child_type = _LockedGaugeChild if threadsafe else _GaugeChild
        super().__init__(name, help, labelnames)

    def _new_child(self) -> _GaugeChild:
        return self._child_type()

    def inc(self, amount: float = 1) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    @property
    def value(self) -> float:
        """The unlabelled gauge's value."""
        return self._unlabelled().value


class Histogram(_Metric):
    """Observations counted in fixed cumulative buckets (``le``), plus their sum and count."""

    type_name = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name!r}: buckets must be increasing, got {buckets}")
        if "le" in labelnames:
            raise ValueError(f"histogram {name!r}: 'le' is a reserved label")
        self.buckets = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _child_value(self, child: _HistogramChild) -> Any:
        return [list(child.counts), child.sum]

    def _render_samples(self, out: list[str], children: dict[str, Any]) -> None:
        les = [f'le="{_fmt(b)}"' for b in self.buckets] + ['le="+Inf"']
        for joined, (counts, total) in sorted(children.items()):
            key = _split(joined, self)
            cumulative = 0
            for le, count in zip(les, counts, strict=True):
                cumulative += count
                out.append(f"{self.name}_bucket{self._label_text(key, le)} {cumulative}")
            labels = self._label_text(key)
            out.append(f"{self.name}_sum{labels} {_fmt(total)}")
            out.append(f"{self.name}_count{labels} {cumulative}")


class Registry:
    """Metrics by name, rendered together in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> Any:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, threadsafe: bool = False
    ) -> Counter:
        return self.register(Counter(name, help, labelnames, threadsafe=threadsafe))

    def gauge(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, threadsafe: bool = False
    ) -> Gauge:
        return self.register(Gauge(name, help, labelnames, threadsafe=threadsafe))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self.register(Histogram(name, help, labelnames, buckets=buckets))

    def snapshot(self) -> dict[str, Any]:
        """Every metric's values, as JSON (what a worker shares with the others)."""
        return {name: metric.snapshot() for name, metric in list(self._metrics.items())}

    def render(self, shared: SharedMetrics | None = None) -> bytes:
        """Every metric in the Prometheus text exposition format 0.0.4 (UTF-8).

        Args:
            shared: the workers' shared directory: the other workers' values are added (and
                this worker's snapshot is written first, see ``metrics_shared``).
        """
        snapshot = self.snapshot()
        if shared is not None:
            shared.write(snapshot)
            snapshot = merge(snapshot, shared.others())
        out: list[str] = []
        for name, metric in list(self._metrics.items()):
            metric.render_into(out, snapshot[name]["children"])
        out.append("")
        return "\n".join(out).encode()
