"""The payload log under faults: a full disk (a real, small tmpfs), an unwritable directory, a size
cap and oversized records. The invariant: every record counted written is on disk, whole, and
every other submitted record is counted dropped with its reason."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlflow_deploy_plugins.core.payload_format import list_files, read_records
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.payload_files import PayloadLogDirectoryError
from mlflow_deploy_plugins.serving.payload_log import RETRY_S, PayloadLogger


def _columns(i: int) -> dict[str, np.ndarray]:
    return {
        "x": np.arange(20, dtype=np.float64) + i,
        "city": np.array(["paris"] * 20, dtype=object),
    }


def _outputs() -> dict[str, np.ndarray]:
    return {"label": np.zeros(20, dtype=np.int64)}


def _on_disk(directory: Path) -> list[str]:
    return [r["request_id"] for r in read_records(directory)]


def test_full_disk_counts_only_records_that_reached_the_file(small_disk, caplog):
    logs = small_disk / "logs"
    logger = PayloadLogger(logs, "m", "1", metrics=ServingMetrics(), queue_size=100_000)
    n = 3000  # ~500 bytes each: far more than 64 KiB
    with caplog.at_level(logging.ERROR, logger="mlflow_deploy_plugins.serving.payload_log"):
        for i in range(n):
            assert logger.submit(f"r{i}", _columns(i), _outputs())
        assert logger.close()
    on_disk = _on_disk(logs)
    assert 0 < logger.written == len(on_disk) < n
    assert logger.written + logger.dropped == n
    assert logger.dropped_by_reason()["write_error"] == n - logger.written
    # the records on disk are the first ones, in order, each whole
    assert on_disk == [f"r{i}" for i in range(len(on_disk))]
    # no litter: no empty files, whatever the number of failed attempts
    assert all(f.path.stat().st_size > 0 for f in list_files(logs))
    episodes = [r for r in caplog.records if "cannot write to" in r.getMessage()]
    assert len(episodes) == 1, "a failure episode is logged once, not per record"
    assert "No space left" in episodes[0].getMessage()


def test_writing_resumes_when_space_comes_back(small_disk, caplog):
    logs = small_disk / "logs"
    logger = PayloadLogger(logs, "m", "1", metrics=ServingMetrics(), queue_size=100_000)
    for i in range(1000):
        logger.submit(f"a{i}", _columns(i), _outputs())
    assert logger.flush(timeout=30)
    first = logger.written
    assert logger.dropped > 0
    for f in list_files(logs):  # an operator frees the disk
        if f.finished:
            f.path.unlink()
    time.sleep(RETRY_S + 0.2)
    with caplog.at_level(logging.WARNING, logger="mlflow_deploy_plugins.serving.payload_log"):
        for i in range(10):
            assert logger.submit(f"b{i}", _columns(i), _outputs())
        assert logger.close()
    assert [r for r in _on_disk(logs) if r.startswith("b")] == [f"b{i}" for i in range(10)]
    assert logger.written == first + 10
    assert any("again after" in r.getMessage() for r in caplog.records)


def test_an_unwritable_directory_is_refused_at_start(tmp_path, small_disk):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(PayloadLogDirectoryError, match="is not writable"):
        PayloadLogger(tmp_path / "file" / "logs", "m", "1")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(PayloadLogDirectoryError, match=r"disk.*is not writable: Read-only"):
        PayloadLogger(small_disk, "m", "1")


def test_the_size_cap_removes_the_oldest_finished_files(tmp_path):
    metrics = ServingMetrics()
    cap = 40_000
    logger = PayloadLogger(
        tmp_path / "logs", "m", "1", metrics=metrics, max_total_bytes=cap, max_file_bytes=8000
    )
    for i in range(600):
        assert logger.submit(f"r{i}", _columns(i), _outputs())
        if i % 50 == 0:
            assert logger.flush()
    assert logger.close()
    files = list_files(tmp_path / "logs")
    assert sum(f.path.stat().st_size for f in files) <= cap
    kept = _on_disk(tmp_path / "logs")
    assert kept == [f"r{i}" for i in range(600 - len(kept), 600)], "the newest records are kept"
    removed = int(metrics.payload_log_files_removed_total.value)
    assert removed > 0 and metrics.payload_log_bytes_removed_total.value > 0
    assert logger.written == 600 and logger.dropped == 0


def test_a_record_over_the_size_limit_is_dropped_and_counted(tmp_path):
    logger = PayloadLogger(tmp_path / "logs", "m", "1", max_record_bytes=2000)
    logger.submit("small", _columns(0), _outputs())
    big = {"x": np.zeros(10_000), "city": np.array(["x"] * 10_000, dtype=object)}
    logger.submit("big", big, {"label": np.zeros(10_000, dtype=np.int64)})
    logger.submit("small2", _columns(1), _outputs())
    assert logger.close()
    assert _on_disk(tmp_path / "logs") == ["small", "small2"]
    assert logger.dropped_by_reason()["too_large"] == 1 and logger.written == 2


def test_the_server_refuses_to_start_on_an_unwritable_log_directory(served, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow_deploy_plugins.serving",
            served.clf_bundle,
            "--port",
            "0",
            "--payload-log",
            str(tmp_path / "file" / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "payload log directory" in done.stderr and "is not writable" in done.stderr


def test_a_full_disk_at_start_is_not_an_unwritable_directory(small_disk):
    # A worker restarted while the disk is full must serve (and count its drops), not fail.
    (small_disk / "logs").mkdir()
    with open(small_disk / "filler", "wb") as f, pytest.raises(OSError):
        f.write(b"\0" * (1 << 20))
    logger = PayloadLogger(small_disk / "logs", "m", "1", metrics=ServingMetrics())
    assert logger.submit("r0", _columns(0), _outputs())
    assert logger.close()
    assert logger.written == 0 and logger.dropped_by_reason()["write_error"] == 1


def test_unready_until_the_log_directory_is_writable(served, kit, tmp_path, start_server):
    # payload_log_unwritable=unready: a volume mounted after the server starts. Until the
    # directory can be written, readiness and inference answer 503 naming it (liveness stays
    # 200); then the server becomes ready by itself and logs what it answers.
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory yet")
    logs = blocker / "logs"
    server = start_server(
        served.clf_bundle,
        "--payload-log",
        str(logs),
        "--payload-log-unwritable",
        "unready",
        ready_path="/v2/health/live",
        label="unready-log",
    )
    ready = server.get("/v2/health/ready")
    assert ready.status == 503 and "payload log directory" in ready.text, ready.text
    body = kit.v2_columns_body(kit.churn_frame(3, seed=2))
    refused = server.post(f"/v2/models/{served.clf_manifest.name}/infer", body)
    assert refused.status == 503 and "not writable" in refused.text
    blocker.unlink()  # the volume arrives
    deadline = time.monotonic() + 15
    while server.get("/v2/health/ready").status != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.2)
    answered = server.post(
        f"/v2/models/{served.clf_manifest.name}/infer", body, {"X-Request-Id": "after-mount"}
    )
    assert answered.status == 200, answered.text
    assert server.stop() == 0
    assert _on_disk(logs) == ["after-mount"]
