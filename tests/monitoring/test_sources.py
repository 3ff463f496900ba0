"""Reading current data: uniform bounded sample, payload logs (window, rotation, .part), files."""

from __future__ import annotations

import gzip
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from mlflow_deploy_plugins.core.iospec import IOSpec
from mlflow_deploy_plugins.core.payload_format import RECORD_TIME, list_files
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.monitoring.sampling import RowReservoir
from mlflow_deploy_plugins.monitoring.sources import read_sample
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.payload_log import PayloadLogger

#: The IO contract of a small classifier: two columns, label + probabilities outputs.
IO = IOSpec.from_dict(
    {
        "inputs": [
            {"name": "x", "columns": ["x"], "dtype": "float64", "shape": [None, 1]},
            {"name": "city", "columns": ["city"], "dtype": "string", "shape": [None, 1]},
        ],
        "outputs": [
            {"name": "label", "dtype": "int64", "role": "label", "shape": [None]},
            {
                "name": "probabilities",
                "dtype": "float32",
                "role": "probabilities",
                "shape": [None, 2],
            },
        ],
        "task": "classification",
        "classes": [False, True],
        "default_role": "label",
    }
)


def _request(i: int, n: int = 2):
    columns = {"x": np.arange(n, dtype=float) + i, "city": np.array(["a", "b"][:n] * n)[:n]}
    outputs = {
        "label": np.array([i % 2] * n, dtype=np.int64),
        "probabilities": np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (n, 1)),
    }
    return columns, outputs


def _logger(directory: Path, **kwargs) -> PayloadLogger:
    return PayloadLogger(directory, "m-onnx", "1", metrics=ServingMetrics(), **kwargs)


def _read(source, **kwargs):
    kwargs.setdefault("sample_size", 100_000)
    return read_sample(source, side="current", seed=0, io=IO, **kwargs)


# ====================================================================== sampling
def test_reservoir_is_bounded_uniform_and_seeded():
    reservoir = RowReservoir(1000, seed=1)
    for start in range(0, 100_000, 7_000):  # uneven chunks
        stop = min(start + 7_000, 100_000)
        reservoir.add(pd.DataFrame({"i": np.arange(start, stop)}))
    sample = reservoir.result()
    assert reservoir.rows_seen == 100_000 and len(sample) == 1000
    assert sample["i"].is_unique and sample["i"].is_monotonic_increasing  # arrival order
    # uniform: each tenth of the stream holds about a tenth of the sample (chi-squared, 9 dof)
    counts = np.bincount(sample["i"] // 10_000, minlength=10)
    assert ((counts - 100) ** 2 / 100).sum() < 27.9  # p = 0.001
    again = RowReservoir(1000, seed=1)
    again.add(pd.DataFrame({"i": np.arange(100_000)}))
    assert again.result()["i"].tolist() == sample["i"].tolist()  # chunking does not matter
    small = RowReservoir(1000, seed=1)
    small.add(pd.DataFrame({"i": np.arange(10)}))
    assert small.result()["i"].tolist() == list(range(10))


# ====================================================================== payload logs
def test_payload_log_rows_outputs_and_rotation(tmp_path):
    logger = _logger(tmp_path / "logs", max_file_bytes=2000, gzip=True)
    for i in range(50):
        logger.submit(f"r{i}", *_request(i))
    assert logger.close()
    files = list_files(tmp_path / "logs")
    assert len(files) > 3 and all(f.gzip and f.finished for f in files)
    sample = _read(str(tmp_path / "logs"))
    assert sample.rows_seen == 100 and sample.files_read == len(files)
    assert sample.columns == ["x", "city", "prediction", "proba_False", "proba_True"]
    frame = sample.frame
    assert frame["x"].tolist() == [v for i in range(50) for v in (i, i + 1.0)]
    assert frame["prediction"].dtype == bool  # the label as the source returned it
    assert frame["proba_True"].tolist() == [0.75] * 100
    assert sample.models == {"m-onnx/1": 50}


def test_part_files_are_read_and_never_double_counted(tmp_path):
    logs = tmp_path / "logs"
    logger = _logger(logs)
    for i in range(5):
        logger.submit(f"r{i}", *_request(i))
    assert logger.flush()
    (part,) = list_files(logs)
    assert not part.finished
    with open(part.path, "ab") as f:
        f.write(b'{"schema_version": 1, "ts": "2026')  # a line half way to disk
    assert _read(str(logs)).rows_seen == 10
    logger.close()  # the .part is renamed: finished
    (finished,) = list_files(logs)
    # both names of one identity exist for a moment (gzip rotation): read once
    (logs / f"{finished.key}.jsonl.part").write_bytes(finished.path.read_bytes())
    assert _read(str(logs)).rows_seen == 10
    assert _read(str(finished.path)).rows_seen == 10  # one file given directly


def _write_file(directory: Path, start: datetime, records: list[dict], finished=True) -> Path:
    """A payload log file as the runtime names it, records timestamped ``start + i s``."""
    key = f"payload-{start:%Y%m%dT%H%M%SZ}-77-{len(os.listdir(directory)) + 1:06d}"
    end = start + timedelta(seconds=len(records) - 1)
    name = f"{key}-{end:%Y%m%dT%H%M%SZ}.jsonl" if finished else f"{key}.jsonl.part"
    lines = []
    for i, record in enumerate(records):
        ts = (start + timedelta(seconds=i)).strftime(RECORD_TIME)
        lines.append(orjson.dumps({"schema_version": 1, "ts": ts, **record}) + b"\n")
    path = directory / name
    path.write_bytes(b"".join(lines))
    return path


def _record(x: float) -> dict:
    return {
        "model": "m-onnx",
        "version": "1",
        "n_rows": 1,
        "inputs": {"x": [x], "city": ["a"]},
        "outputs": {"label": [1], "probabilities": [[0.5, 0.5]]},
    }


def test_time_window_skips_files_by_name(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    for day in range(10):
        path = _write_file(logs, t0 + timedelta(days=day), [_record(day)] * 60)
        if day < 8:
            path.write_bytes(b"garbage\n" * 60)  # opening it would count bad lines
    since = t0 + timedelta(days=8)
    sample = _read(str(logs), since=since)
    assert (sample.files_read, sample.files_skipped, sample.rows_seen) == (2, 8, 120)
    assert sample.bad_lines == 0
    assert sorted(set(sample.frame["x"])) == [8.0, 9.0]
    # a window inside one file filters its records
    sample = _read(
        str(logs), since=since + timedelta(seconds=10), until=since + timedelta(seconds=19)
    )
    assert sample.rows_seen == 10 and sample.files_read == 1
    with pytest.raises(
        InvalidInputError, match="No payload records in .* since 2026-12-01.* 10 outside the window"
    ):
        _read(str(logs), since=t0 + timedelta(days=30))


def test_bad_lines_are_skipped_and_counted(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    path = _write_file(logs, datetime(2026, 11, 1, tzinfo=timezone.utc), [_record(1.0)] * 3)
    with open(path, "ab") as f:
        f.write(b"not json\n")
    sample = _read(str(logs))
    assert sample.rows_seen == 3 and sample.bad_lines == 1


@pytest.mark.parametrize("finished", [True, False])
def test_a_truncated_last_line_counts_in_a_finished_file_only(tmp_path, finished):
    # A finished file's broken tail comes from a crash or a full disk: one unreadable line, not
    # a record lost unseen. A .part's is still being written: the next read takes it whole.
    logs = tmp_path / "logs"
    logs.mkdir()
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    path = _write_file(logs, start, [_record(1.0)] * 4, finished=finished)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the 4th record cut in half, no newline
    sample = _read(str(logs))
    assert sample.rows_seen == 3
    assert sample.bad_lines == (1 if finished else 0)
    sample = _read(str(path))  # the file itself, not its directory
    assert sample.bad_lines == (1 if finished else 0)


def test_reservoir_bounds_a_large_log(tmp_path):
    logger = _logger(tmp_path / "logs", max_file_bytes=50_000)
    for i in range(2000):
        logger.submit(f"r{i}", *_request(i, n=5))
    assert logger.close()
    sample = _read(str(tmp_path / "logs"), sample_size=500)
    assert sample.rows_seen == 10_000 and len(sample.frame) == 500
    assert sample.frame["x"].between(0, 2004).all()


def test_reading_while_the_writer_rotates(tmp_path):
    """Polling during writes and rotations: never more rows than written, every row at the end."""
    logs = tmp_path / "logs"
    logger = _logger(logs, max_file_bytes=3000)
    done = threading.Event()

    def serve():
        for i in range(1500):
            logger.submit(f"r{i}", *_request(i))
            if i % 100 == 0:
                time.sleep(0.002)
        done.set()

    writer = threading.Thread(target=serve)
    writer.start()
    seen = passes = 0
    while not done.is_set() or passes < 3:
        try:
            rows = _read(str(logs)).rows_seen
        except InvalidInputError:  # no file, or no complete line yet
            rows = 0
        assert rows % 2 == 0 and seen <= rows <= 3000
        seen, passes = rows, passes + 1
    writer.join()
    assert logger.close()
    assert _read(str(logs)).rows_seen == 3000


# ====================================================================== files
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".csv.gz", ".jsonl.gz"])
def test_files(tmp_path, suffix):
    frame = pd.DataFrame({"x": np.arange(1000, dtype=float), "zip": ["01234", "75001"] * 500})
    path = tmp_path / f"current{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif ".csv" in suffix:
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    sample = read_sample(str(path), side="current", sample_size=300, seed=0, categorical={"zip"})
    assert sample.rows_seen == 1000 and len(sample.frame) == 300
    assert sample.columns == ["x", "zip"]
    assert set(sample.frame["zip"]) == {"01234", "75001"}  # text stays text
    assert sample.frame["x"].dtype == float


def test_unreadable_sources(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        _read(str(tmp_path / "nope.parquet"))
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="expected a payload-log directory or a file"):
        _read(str(tmp_path / "data.xlsx"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="as Parquet"):
        _read(str(tmp_path / "bad.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no payload log files"):
        _read(str(tmp_path / "empty"))
    (tmp_path / "empty.csv").write_text("x,city\n")
    with pytest.raises(InvalidInputError, match="has no rows"):
        _read(str(tmp_path / "empty.csv"))
    with pytest.raises(InvalidInputError, match="DataFrame or a path"):
        _read(42)
    gz = tmp_path / "payload.jsonl.gz"
    record = {"schema_version": 1, "ts": "x", "inputs": {}, "outputs": {}}
    gz.write_bytes(gzip.compress(orjson.dumps(record) + b"\n"))
    with pytest.raises(InvalidInputError, match="No payload records"):
        _read(str(gz))


@pytest.mark.slow
def test_log_of_a_live_runtime_is_read_while_it_serves(runtime, kit, tmp_path):
    """The real runtime: rows readable from its in-progress file, then all of them after SIGTERM."""
    logs = tmp_path / "live"
    server = runtime(logs, "--payload-log-file-max-bytes", "20000")
    first, second = kit.make_frame(300, seed=20), kit.make_frame(200, seed=21)
    server.send(first)
    deadline = time.monotonic() + 10
    while True:  # the writer flushes whenever its queue runs empty
        try:
            rows = read_sample(str(logs), side="current", sample_size=10_000, seed=0).rows_seen
        except InvalidInputError:
            rows = 0
        if rows == len(first) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows == len(first)
    assert any(not f.finished for f in list_files(logs)), "expected a file in progress"
    server.send(second)
    assert server.stop() == 0
    assert all(f.finished for f in list_files(logs))
    sample = read_sample(str(logs), side="current", sample_size=10_000, seed=0)
    assert sample.rows_seen == len(first) + len(second)
    sent = pd.concat([first, second], ignore_index=True)
    for column in kit.INPUTS:
        assert sorted(sample.frame[column]) == sorted(sent[column]), column
    assert {"label", "probabilities_0", "probabilities_1"} <= set(sample.columns)


def test_records_of_other_models_are_said(caplog):
    # the records name the model that served them: a directory of another model's records is
    # said (not refused: a server run with --model-name writes that name instead)
    import logging

    from mlflow_deploy_plugins.monitoring.drift import _warn_other_models
    from mlflow_deploy_plugins.monitoring.target import MonitoredModel

    model = MonitoredModel(
        "models:/churn-onnx/1",
        "churn-onnx",
        "1",
        tagged_versions=[("churn-onnx", "1"), ("churn", "3")],
    )
    with caplog.at_level(logging.WARNING, "mlflow_deploy_plugins.monitoring.drift"):
        _warn_other_models(model, {"churn-onnx/1": 30})
        _warn_other_models(model, {})  # not a payload log
        assert not caplog.records
        _warn_other_models(model, {"fraud-onnx/3": 30})
        assert "written by fraud-onnx/3, not by churn or churn-onnx" in caplog.text
        caplog.clear()
        _warn_other_models(model, {"churn-onnx/1": 15, "someone-else/7": 15})
        assert (
            "several models (churn-onnx/1: 15 records, someone-else/7: 15 records)" in caplog.text
        )


def test_a_missing_input_column_is_named_apart_from_the_predictions_it_prevents():
    from mlflow_deploy_plugins.monitoring.schema import ExpectedColumns, compare_columns

    expected = ExpectedColumns(
        inputs=("age", "plan"), predictions=("prediction", "proba_1"), kinds={}
    )
    with pytest.raises(InvalidInputError) as err:
        compare_columns(["age"], expected, "reference", intersection=False)
    message = err.value.message
    assert "missing column(s) ['plan'] (without them the model's predictions" in message
    assert "['prediction', 'proba_1'] cannot be computed either" in message
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) \['proba_1'\];"):
        compare_columns(["age", "plan", "prediction"], expected, "reference", intersection=False)
