"""The serving runtime's metrics: names, help texts, labels and buckets (``ServingMetrics``),
on the tiny registry of ``prometheus.py``."""

from __future__ import annotations

from mlflow_deploy_plugins.serving.metrics_shared import SharedMetrics
from mlflow_deploy_plugins.serving.prometheus import CONTENT_TYPE, LATENCY_BUCKETS, Registry

__all__ = ["BATCH_SIZE_BUCKETS", "CONTENT_TYPE", "PAYLOAD_DROP_REASONS", "ServingMetrics"]

#: Rows per onnxruntime call.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

#: Why payload log records are dropped: the values of the ``reason`` label.
PAYLOAD_DROP_REASONS = ("queue_full", "closed", "too_large", "unserialisable", "write_error")


class ServingMetrics:
    """The runtime's metrics; every name starts with ``namespace + "_"``.

    Attributes:
        requests_total: requests answered, labels ``route`` and ``status``.
        request_duration_seconds: latency from parsed request to response, label ``route``.
        batch_size: rows per onnxruntime call.
        inflight_requests: requests received and not yet answered.
        payload_log_records_written_total: payload log records on disk (writer thread).
        payload_log_records_dropped_total: payload log records lost, label ``reason``.
        payload_log_files_removed_total, payload_log_bytes_removed_total: what the size cap
            removed.
        model_info: 1, labels ``name`` and ``version`` of the served model.
    """

    def __init__(self, namespace: str = "mlflow_deploy", shared: SharedMetrics | None = None):
        p = f"{namespace}_" if namespace else ""
        #: With several workers: where they share their values (``render`` sums them).
        self.shared = shared
        self.registry = r = Registry()
        self.requests_total = r.counter(
            f"{p}requests_total",
            "Requests answered, by route and HTTP status.",
            ("route", "status"),
        )
        self.request_duration_seconds = r.histogram(
            f"{p}request_duration_seconds",
            "Time from a parsed request to its response, in seconds.",
            ("route",),
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = r.histogram(
            f"{p}batch_size", "Rows per onnxruntime call.", buckets=BATCH_SIZE_BUCKETS
        )
        self.inflight_requests = r.gauge(
            f"{p}inflight_requests", "Requests received and not yet answered."
        )
        self.payload_log_records_written_total = r.counter(
            f"{p}payload_log_records_written_total",
            "Payload log records written to disk.",
            threadsafe=True,
        )
        self.payload_log_records_dropped_total = r.counter(
            f"{p}payload_log_records_dropped_total",
            "Payload log records lost, by reason: queue_full, closed, too_large, "
            "unserialisable, write_error.",
            ("reason",),
            threadsafe=True,
        )
        for reason in PAYLOAD_DROP_REASONS:  # every series exists from the start, at 0
            self.payload_log_records_dropped_total.labels(reason)
        self.payload_log_files_removed_total = r.counter(
            f"{p}payload_log_files_removed_total",
            "Finished payload log files removed to keep the directory under its size cap.",
            threadsafe=True,
        )
        self.payload_log_bytes_removed_total = r.counter(
            f"{p}payload_log_bytes_removed_total",
            "Bytes of payload log files removed to keep the directory under its size cap.",
            threadsafe=True,
        )
        self.model_info = r.gauge(
            f"{p}model_info", "The served model; always 1.", ("name", "version")
        )
        self.model_info.aggregate = "max"  # 1 however many workers serve it

    def set_model(self, name: str, version: str) -> None:
        """Publish the served model's name and version as ``model_info``."""
        self.model_info.labels(name, version).set(1)

    def render(self) -> bytes:
        """Every metric in the text exposition format; serve it with :data:`CONTENT_TYPE`.

        With ``shared``, the values of every worker of the server (see ``metrics_shared``).
        """
        return self.registry.render(self.shared)

    def share(self) -> None:
        """Write this worker's snapshot for the others (periodically and when stopping)."""
        if self.shared is not None:
            self.shared.write(self.registry.snapshot())
