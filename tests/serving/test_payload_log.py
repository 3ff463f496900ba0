"""PayloadLogger: record schema, sampling, rotation, drops, draining, SIGTERM; the reader contract."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mlflow_deploy_plugins.core.payload_format import (
    FILE_NAME,
    SCHEMA_VERSION,
    file_lines,
    list_files,
    read_records,
)
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.payload_log import PayloadLogger
from mlflow_deploy_plugins.serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[2]
TS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


def _columns(i: int = 0) -> dict[str, np.ndarray]:
    return {
        "age": np.array([40.5 + i, 31.0]),
        "city": np.array(["paris", "lyon"], dtype=object),
        "n": np.array([1, 2], dtype=np.int64),
    }


def _outputs() -> dict[str, np.ndarray]:
    return {"label": np.array([1, 0], dtype=np.int64), "proba": np.array([[0.2, 0.8], [0.9, 0.1]])}


def _logger(tmp_path: Path, **kwargs) -> PayloadLogger:
    kwargs.setdefault("metrics", ServingMetrics())
    return PayloadLogger(tmp_path / "logs", "churn-onnx", "3", **kwargs)


def _raw(log_file) -> bytes:
    data = log_file.path.read_bytes()
    return gzip.decompress(data) if log_file.gzip else data


def _ids(directory: Path) -> list[str]:
    return [r["request_id"] for r in read_records(directory)]


def test_records_have_the_schema(tmp_path):
    logger = _logger(tmp_path)
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert logger.submit("r1", _columns(), _outputs())
    assert logger.submit(
        "r2",
        {
            "sliced": matrix[:, 1],  # not C-contiguous
            "text": np.array(["a", "é", "c"]),  # numpy unicode dtype
            "flag": np.array([True, False, True]),
            "nan": np.array([np.nan, np.inf, 1.5]),
            "raw": np.array([b"x", b"y", b"z"], dtype=object),
        },
        {"matrix": matrix},
    )
    assert logger.close()
    assert not list((tmp_path / "logs").glob("*.part"))
    (log_file,) = list_files(tmp_path / "logs")
    assert log_file.finished and FILE_NAME.match(log_file.path.name)
    lines = log_file.path.read_bytes().splitlines()
    assert len(lines) == 2
    r1, r2 = (json.loads(line) for line in lines)
    assert set(r1) == {
        "schema_version", "ts", "request_id", "model", "version", "n_rows", "inputs", "outputs",
    }  # fmt: skip
    assert r1["schema_version"] == SCHEMA_VERSION == 1
    assert r1["request_id"] == "r1" and r1["model"] == "churn-onnx" and r1["version"] == "3"
    assert r1["n_rows"] == 2
    assert r1["inputs"] == {"age": [40.5, 31.0], "city": ["paris", "lyon"], "n": [1, 2]}
    assert r1["outputs"] == {"label": [1, 0], "proba": [[0.2, 0.8], [0.9, 0.1]]}
    assert re.match(TS, r1["ts"])
    ts = datetime.strptime(r1["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before <= ts <= datetime.now(timezone.utc)
    assert r2["n_rows"] == 3
    assert r2["inputs"] == {
        "sliced": [1.0, 5.0, 9.0],
        "text": ["a", "é", "c"],
        "flag": [True, False, True],
        "nan": [None, None, 1.5],
        "raw": ["x", "y", "z"],
    }
    assert r2["outputs"]["matrix"] == matrix.tolist()
    assert log_file.start <= ts.replace(microsecond=0) <= log_file.end
    assert logger.written == 2 and logger.dropped == 0


def test_sampling_rate_is_respected(tmp_path):
    n = 4000
    logger = _logger(tmp_path, sample_rate=0.25, seed=7)
    accepted = sum(logger.submit(f"r{i}", _columns(), _outputs()) for i in range(n))
    assert logger.close()
    assert 850 <= accepted <= 1150  # 1000 expected, sd ~27
    assert len(_ids(tmp_path / "logs")) == accepted == logger.written
    assert logger.dropped == 0  # not sampled is not dropped

    again = PayloadLogger(tmp_path / "again", "m", "1", sample_rate=0.25, seed=7)
    assert sum(again.submit(f"r{i}", _columns(), _outputs()) for i in range(n)) == accepted
    again.close()
    none = PayloadLogger(tmp_path / "none", "m", "1", sample_rate=0.0)
    assert not any(none.submit("r", _columns(), _outputs()) for _ in range(100))
    none.close()
    assert list_files(tmp_path / "none") == []


@pytest.mark.parametrize("use_gzip", [False, True])
def test_rotation_by_size_returns_every_record_once(tmp_path, use_gzip):
    n, max_bytes = 600, 4000
    logger = _logger(tmp_path, max_file_bytes=max_bytes, gzip=use_gzip)
    for i in range(n):
        assert logger.submit(f"r{i}", _columns(i), _outputs())
    assert logger.close()
    files = list_files(tmp_path / "logs")
    assert len(files) > 10
    assert all(f.finished and f.gzip is use_gzip for f in files)
    assert {f.pid for f in files} == {os.getpid()}
    assert [f.seq for f in files] == sorted(f.seq for f in files)
    for f in files:
        raw = _raw(f)
        assert raw.endswith(b"\n")
        # Rotated as soon as a record crosses the limit (records here are ~170 bytes).
        assert len(raw) < max_bytes + 1000
    assert all(len(_raw(f)) >= max_bytes for f in files[:-1])
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(n)]
    assert not [p for p in (tmp_path / "logs").iterdir() if not FILE_NAME.match(p.name)]


def test_reader_never_double_counts_while_files_rotate(tmp_path):
    """A reader polling during writes and gzip rotations sees each record at most once."""
    n = 3000
    logger = _logger(tmp_path, max_file_bytes=3000, gzip=True)
    done = threading.Event()

    def serve():
        for i in range(n):
            logger.submit(f"r{i}", _columns(i), _outputs())
            if i % 100 == 0:
                time.sleep(0.002)
        done.set()

    server = threading.Thread(target=serve)
    server.start()
    passes, seen_before = 0, 0
    while not done.is_set() or passes < 3:
        ids = _ids(tmp_path / "logs")
        assert len(ids) == len(set(ids)), "a record was read twice in one pass"
        assert ids == [f"r{i}" for i in range(len(ids))]  # a prefix: no holes, in order
        assert len(ids) >= seen_before
        seen_before = len(ids)
        passes += 1
    server.join()
    assert logger.close()
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(n)]


def test_in_progress_file_is_readable_and_partial_line_skipped(tmp_path):
    logger = _logger(tmp_path)
    for i in range(5):
        logger.submit(f"r{i}", _columns(), _outputs())
    assert logger.flush()
    (log_file,) = list_files(tmp_path / "logs")
    assert not log_file.finished and log_file.path.name.endswith(".jsonl.part")
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(5)]
    # A record half way to disk (a buffer boundary) is not read until it is whole.
    with open(log_file.path, "ab") as f:
        f.write(b'{"schema_version": 1, "request_id": "half')
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(5)]
    logger.close()


def test_part_finished_between_listing_and_opening_is_read_once(tmp_path):
    logger = _logger(tmp_path, gzip=True)
    for i in range(3):
        logger.submit(f"r{i}", _columns(), _outputs())
    logger.flush()
    (stale,) = list_files(tmp_path / "logs")
    assert not stale.finished
    logger.close()  # the .part becomes a .jsonl.gz and disappears
    assert not stale.path.exists()
    lines = file_lines(tmp_path / "logs", stale)
    assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r1", "r2"]


def test_listing_prefers_the_finished_file_of_an_identity(tmp_path):
    # Between the gzip copy's rename and the .part's removal both names exist.
    logger = _logger(tmp_path)
    logger.submit("r0", _columns(), _outputs())
    logger.close()
    (finished,) = list_files(tmp_path / "logs")
    key = finished.key
    (tmp_path / "logs" / f"{key}.jsonl.part").write_bytes(finished.path.read_bytes())
    (tmp_path / "logs" / f".{key}-x.jsonl.gz.tmp").write_bytes(b"junk")  # ignored
    assert [f.path for f in list_files(tmp_path / "logs")] == [finished.path]
    assert _ids(tmp_path / "logs") == ["r0"]


def test_rotation_by_age(tmp_path):
    logger = _logger(tmp_path, max_age_s=0.2)
    logger.submit("r0", _columns(), _outputs())
    deadline = time.monotonic() + 5
    while not any(f.finished for f in list_files(tmp_path / "logs")):
        assert time.monotonic() < deadline, "file not rotated by age"
        time.sleep(0.02)
    logger.submit("r1", _columns(), _outputs())
    logger.close()
    files = list_files(tmp_path / "logs")
    assert len(files) == 2 and all(f.finished for f in files)
    assert _ids(tmp_path / "logs") == ["r0", "r1"]


def test_time_window(tmp_path):
    logger = _logger(tmp_path)
    logger.submit("r0", _columns(), _outputs())
    logger.close()
    now = datetime.now(timezone.utc)
    assert _ids(tmp_path / "logs") == ["r0"]
    assert [r["request_id"] for r in read_records(tmp_path / "logs", since=now)] == []
    hour = timedelta(hours=1)
    assert len(list(read_records(tmp_path / "logs", since=now - hour, until=now + hour))) == 1
    assert list(read_records(tmp_path / "logs", until=now - hour)) == []
    assert len(list(read_records(tmp_path / "logs", since=now.replace(tzinfo=None) - hour))) == 1


def test_full_queue_drops_are_counted_and_submit_never_blocks(tmp_path):
    metrics = ServingMetrics()
    logger = _logger(tmp_path, queue_size=10, metrics=metrics, autostart=False)
    timings = []
    results = []
    for i in range(1000):
        start = time.perf_counter()
        results.append(logger.submit(f"r{i}", _columns(), _outputs()))
        timings.append(time.perf_counter() - start)
    assert results[:10] == [True] * 10 and not any(results[10:])
    assert logger.dropped == 990
    # A correctness check, not a benchmark: a blocking put would hang, not take 1 ms.
    assert sum(timings) / len(timings) < 0.001
    assert max(timings) < 0.25
    assert logger.close()  # starts the writer and drains the 10 queued records
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(10)]
    rendered = metrics.render()
    assert b'mlflow_deploy_payload_log_records_dropped_total{reason="queue_full"} 990\n' in rendered
    assert b"mlflow_deploy_payload_log_records_written_total 10\n" in metrics.render()
    assert not logger.submit("late", _columns(), _outputs())  # closed: a counted drop
    assert logger.dropped == 991
    assert logger.dropped_by_reason()["closed"] == 1


def test_close_drains_everything(tmp_path):
    n = 5000
    with _logger(tmp_path, queue_size=n, autostart=False, max_file_bytes=100_000) as logger:
        for i in range(n):
            assert logger.submit(f"r{i}", _columns(i), _outputs())
    assert logger.close()  # idempotent
    assert logger.written == n
    assert _ids(tmp_path / "logs") == [f"r{i}" for i in range(n)]
    assert not list((tmp_path / "logs").glob("*.part"))


def test_bad_record_is_dropped_and_writer_carries_on(tmp_path):
    logger = _logger(tmp_path)
    logger.submit("ok0", _columns(), _outputs())
    logger.submit("bad", {"x": np.array([object()], dtype=object)}, {})
    logger.submit("ok1", _columns(), _outputs())
    assert logger.close()
    assert _ids(tmp_path / "logs") == ["ok0", "ok1"]
    assert logger.dropped == 1 and logger.written == 2


def test_never_reuses_an_identity_of_a_restarted_process(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    pid, now = os.getpid(), time.time()
    for delta in range(-1, 3):  # whichever second the first record falls in
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + delta))
        record = {"request_id": f"old{delta}", "ts": "0"}
        name = f"payload-{stamp}-{pid}-000001-{stamp}.jsonl"
        (directory / name).write_bytes(json.dumps(record).encode() + b"\n")
    logger = PayloadLogger(directory, "m", "1")
    logger.submit("new", _columns(), _outputs())
    logger.close()
    ids = _ids(directory)
    assert sorted(ids) == ["new", "old-1", "old0", "old1", "old2"]


def test_from_settings(tmp_path):
    assert PayloadLogger.from_settings(ServingSettings(), "m", "1") is None
    settings = ServingSettings(
        payload_log_dir=str(tmp_path / "p"), payload_log_sample_rate=0.5, payload_log_gzip=True
    )
    logger = PayloadLogger.from_settings(settings, "m", "1")
    assert logger is not None and logger.sample_rate == 0.5 and logger.files.gzip
    assert logger.files.max_total_bytes == settings.payload_log_max_bytes
    logger.close()


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        PayloadLogger(tmp_path, "m", "1", sample_rate=2.0)
    with pytest.raises(ValueError, match="queue_size"):
        PayloadLogger(tmp_path, "m", "1", queue_size=0)


_SIGTERM_CHILD = textwrap.dedent(
    """
    import signal, sys
    import numpy as np
    from mlflow_deploy_plugins.serving.payload_log import PayloadLogger

    directory, n = sys.argv[1], int(sys.argv[2])
    logger = PayloadLogger(directory, "m", "1", max_file_bytes=200_000, queue_size=n, gzip=True)

    def on_sigterm(signum, frame):
        pending = n - logger.written
        ok = logger.close(timeout=20)
        print("pending at SIGTERM", pending, flush=True)
        sys.exit(0 if ok else 3)

    signal.signal(signal.SIGTERM, on_sigterm)
    x = np.arange(20, dtype=np.float64)
    city = np.array(["paris"] * 20, dtype=object)
    for i in range(n):
        assert logger.submit(f"r{i}", {"x": x, "city": city}, {"y": x})
    print("submitted", flush=True)
    while True:
        signal.pause()
    """
)


def test_sigterm_graceful_stop_loses_nothing(tmp_path):
    n = 20_000
    directory = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(directory), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == "submitted"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, out
    assert "pending at SIGTERM" in out
    assert not list(directory.glob("*.part"))
    ids = _ids(directory)
    assert len(ids) == n and ids == [f"r{i}" for i in range(n)]


def test_runtime_modules_import_no_mlflow_pandas_or_pyarrow():
    code = (
        "import sys\n"
        "import mlflow_deploy_plugins.serving.payload_log\n"
        "import mlflow_deploy_plugins.serving.metrics\n"
        "import mlflow_deploy_plugins.serving.settings\n"
        "print(sorted(m for m in ('mlflow', 'pandas', 'pyarrow', 'sklearn') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
