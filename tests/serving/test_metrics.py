"""The Prometheus registry: exposition format 0.0.4, histogram bucket math, thread-safe counters."""

from __future__ import annotations

import math
import re
import threading
import time

import pytest

from mlflow_deploy_plugins.serving.metrics import (
    BATCH_SIZE_BUCKETS,
    CONTENT_TYPE,
    ServingMetrics,
)
from mlflow_deploy_plugins.serving.metrics import (
    PAYLOAD_DROP_REASONS as REASONS,
)
from mlflow_deploy_plugins.serving.prometheus import Registry

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: bytes) -> dict[str, dict]:
    """A strict parser of the text format: metric family -> help, type, samples."""
    families: dict[str, dict] = {}
    current = None
    decoded = text.decode("utf-8")
    assert decoded.endswith("\n")
    for line in decoded.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"family {name} twice"
            current = families[name] = {"help": help_text, "type": None, "samples": []}
            current["name"] = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current["name"] == name, "TYPE must follow its HELP"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            current["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            name, _, label_text, value = m.groups()
            assert current is not None and current["type"] is not None
            suffixes = ("_bucket", "_sum", "_count") if current["type"] == "histogram" else ("",)
            assert any(name == current["name"] + s for s in suffixes), line
            labels = {}
            if label_text:
                consumed = 0
                for lm in _LABEL.finditer(label_text):
                    assert lm.start() == consumed, f"bad labels in {line!r}"
                    labels[lm.group(1)] = _unescape(lm.group(2))
                    consumed = lm.end()
                assert consumed == len(label_text), f"bad labels in {line!r}"
            number = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(value)
            current["samples"].append((name, labels, float(value) if number is None else number))
    return families


def test_counter_gauge_and_labels_render():
    r = Registry()
    c = r.counter("app_requests_total", "Requests.", ("route", "status"))
    c.labels("infer", 200).inc()
    c.labels("infer", "200").inc(2)  # same series whatever the value's type
    c.labels("ping", 200).inc()
    g = r.gauge("app_inflight", "In flight.")
    g.inc(3)
    g.dec()
    plain = r.counter("app_events_total", "Events.")
    plain.inc()
    fam = parse(r.render())
    assert fam["app_requests_total"]["type"] == "counter"
    assert fam["app_requests_total"]["help"] == "Requests."
    assert fam["app_requests_total"]["samples"] == [
        ("app_requests_total", {"route": "infer", "status": "200"}, 3.0),
        ("app_requests_total", {"route": "ping", "status": "200"}, 1.0),
    ]
    assert fam["app_inflight"]["samples"] == [("app_inflight", {}, 2.0)]
    assert fam["app_events_total"]["samples"] == [("app_events_total", {}, 1.0)]
    assert b"app_inflight 2\n" in r.render()  # integers stay integers


def test_exact_lines_and_escaping():
    r = Registry()
    c = r.counter("x_total", 'Help with \\ and\nnewline "quotes".', ("path",))
    c.labels('a"b\\c\nd').inc()
    g = r.gauge("y", "Y.")
    g.set(0.25)
    assert r.render().decode().splitlines() == [
        '# HELP x_total Help with \\\\ and\\nnewline "quotes".',
        "# TYPE x_total counter",
        'x_total{path="a\\"b\\\\c\\nd"} 1',
        "# HELP y Y.",
        "# TYPE y gauge",
        "y 0.25",
    ]
    assert parse(r.render())["x_total"]["samples"][0][1] == {"path": 'a"b\\c\nd'}
    g.set(math.inf)
    assert b"y +Inf\n" in r.render()
    g.set(math.nan)
    assert b"y NaN\n" in r.render()


def test_histogram_bucket_math():
    r = Registry()
    h = r.histogram("h", "H.", buckets=(1, 2, 4))
    for v in (0.5, 1, 1.5, 2, 3, 4, 100):  # bounds are inclusive: le means <=
        h.observe(v)
    lines = r.render().decode().splitlines()
    assert lines[2:] == [
        'h_bucket{le="1.0"} 2',
        'h_bucket{le="2.0"} 4',
        'h_bucket{le="4.0"} 6',
        'h_bucket{le="+Inf"} 7',
        "h_sum 112.0",
        "h_count 7",
    ]


def test_histogram_with_labels_is_cumulative_and_consistent():
    r = Registry()
    h = r.histogram("lat_seconds", "L.", ("route",), buckets=(0.001, 0.01, 0.1))
    values = {"a": [0.0005, 0.002, 0.05, 0.5, 0.0011], "b": [0.01]}
    for route, vs in values.items():
        for v in vs:
            h.labels(route).observe(v)
    fam = parse(r.render())["lat_seconds"]
    assert fam["type"] == "histogram"
    for route, vs in values.items():
        buckets = [
            (s[1]["le"], s[2])
            for s in fam["samples"]
            if s[0] == "lat_seconds_bucket" and s[1]["route"] == route
        ]
        les = [math.inf if le == "+Inf" else float(le) for le, _ in buckets]
        assert les == [0.001, 0.01, 0.1, math.inf]
        assert [count for _, count in buckets] == [sum(v <= le for v in vs) for le in les]
        (total,) = [
            s[2] for s in fam["samples"] if s[0] == "lat_seconds_sum" and s[1] == {"route": route}
        ]
        (count,) = [
            s[2] for s in fam["samples"] if s[0] == "lat_seconds_count" and s[1] == {"route": route}
        ]
        assert total == pytest.approx(sum(vs)) and count == len(vs) == buckets[-1][1]


def test_invalid_definitions_are_rejected():
    r = Registry()
    r.counter("a_total", "A.")
    with pytest.raises(ValueError, match="already registered"):
        r.counter("a_total", "A.")
    with pytest.raises(ValueError, match="invalid metric name"):
        r.counter("1bad", "B.")
    with pytest.raises(ValueError, match="invalid label name"):
        r.counter("b_total", "B.", ("bad-label",))
    with pytest.raises(ValueError, match="reserved"):
        r.histogram("c", "C.", ("le",))
    with pytest.raises(ValueError, match="increasing"):
        r.histogram("d", "D.", buckets=(2, 1))
    c = r.counter("e_total", "E.", ("x",))
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("1", "2")
    with pytest.raises(ValueError, match="use labels"):
        c.inc()
    with pytest.raises(ValueError, match="only goes up"):
        r.counter("f_total", "F.").inc(-1)


def test_threadsafe_counter_is_exact_under_contention():
    r = Registry()
    c = r.counter("t_total", "T.", threadsafe=True)
    n, threads = 20_000, 4

    def work():
        for _ in range(n):
            c.inc()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert c.value == n * threads


def test_hot_path_is_cheap():
    m = ServingMetrics()
    child = m.requests_total.labels("infer", 200)
    start = time.perf_counter()
    for i in range(100_000):
        m.requests_total.labels("infer", 200).inc()
        m.request_duration_seconds.labels("infer").observe(0.0002)
        m.batch_size.observe(i % 70)
        m.inflight_requests.inc()
    elapsed = time.perf_counter() - start
    assert child.value == 100_000
    # Correctness bound, not a benchmark: four updates in well under 5 µs each here.
    assert elapsed < 2.0


def test_serving_metrics_names_and_render():
    m = ServingMetrics()
    m.set_model("churn-onnx", "3")
    m.requests_total.labels("v2_infer", 200).inc()
    m.request_duration_seconds.labels("v2_infer").observe(0.0004)
    for rows in (1, 3, 64, 200):
        m.batch_size.observe(rows)
    m.inflight_requests.set(2)
    m.payload_log_records_written_total.inc(5)
    m.payload_log_records_dropped_total.labels("queue_full").inc()
    m.payload_log_files_removed_total.inc(2)
    m.payload_log_bytes_removed_total.inc(4096)
    fam = parse(m.render())
    assert set(fam) == {
        "mlflow_deploy_requests_total",
        "mlflow_deploy_request_duration_seconds",
        "mlflow_deploy_batch_size",
        "mlflow_deploy_inflight_requests",
        "mlflow_deploy_payload_log_records_written_total",
        "mlflow_deploy_payload_log_records_dropped_total",
        "mlflow_deploy_payload_log_files_removed_total",
        "mlflow_deploy_payload_log_bytes_removed_total",
        "mlflow_deploy_model_info",
    }
    dropped = {
        labels["reason"]: value
        for _, labels, value in fam["mlflow_deploy_payload_log_records_dropped_total"]["samples"]
    }
    assert dropped == {reason: 1.0 if reason == "queue_full" else 0.0 for reason in REASONS}
    assert fam["mlflow_deploy_model_info"]["samples"] == [
        ("mlflow_deploy_model_info", {"name": "churn-onnx", "version": "3"}, 1.0)
    ]
    batch = {
        s[1]["le"]: s[2]
        for s in fam["mlflow_deploy_batch_size"]["samples"]
        if s[0].endswith("_bucket")
    }
    assert [float(le) for le in batch if le != "+Inf"] == [float(b) for b in BATCH_SIZE_BUCKETS]
    assert batch["1.0"] == 1 and batch["4.0"] == 2 and batch["64.0"] == 3 and batch["+Inf"] == 4
    assert fam["mlflow_deploy_payload_log_records_written_total"]["samples"][0][2] == 5
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert parse(ServingMetrics(namespace="").render()).keys() >= {"requests_total", "batch_size"}
