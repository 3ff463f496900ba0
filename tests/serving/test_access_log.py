"""The access log of a real server: one JSON line per request with the documented fields,
buffered but never lost (server errors written at once, the rest at the latest on stop)."""

from __future__ import annotations

import asyncio
import json
import os

from mlflow_deploy_plugins.serving.access_log import LOGGER, AccessLog


def _access_lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == LOGGER]


def test_every_request_is_logged_once_in_order_and_flushed_on_stop(served, start_server, kit):
    server = start_server(served.clf_bundle, "--access-log", label="access-log")
    frame = kit.churn_frame(2, seed=3)
    assert server.post("/invocations", {"dataframe_split": frame.to_dict("split")}).status == 200
    assert server.get("/nope").status == 404
    assert server.get("/v2/health/ready").status == 200
    assert server.stop() == 0
    lines = _access_lines(server.log_path.read_text())
    while lines and lines[0]["http"]["path"] == "/v2/health/ready":
        lines.pop(0)  # the fixture's readiness polling
    assert [(x["http"]["method"], x["http"]["path"], x["http"]["status"]) for x in lines] == [
        ("POST", "/invocations", 200),
        ("GET", "/nope", 404),
        ("GET", "/v2/health/ready", 200),
    ]
    first = lines[0]
    assert first["level"] == "INFO" and first["msg"] == "POST /invocations 200"
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-12-03T10:00:00.000Z")
    assert set(first["http"]) == {
        "method",
        "path",
        "status",
        "duration_ms",
        "bytes",
        "request_id",
        "remote",
    }
    assert first["http"]["bytes"] > 0 and first["http"]["duration_ms"] >= 0


def test_lines_are_batched_and_server_errors_written_at_once(tmp_path):
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    log = AccessLog(fd=write_fd, flush_s=60, max_buffer=10_000)

    def pending() -> bytes:
        try:
            return os.read(read_fd, 1 << 20)
        except BlockingIOError:
            return b""

    async def scenario():
        log.record("GET", "/ping", 200, 0.001, 1, "r1", "127.0.0.1")
        log.record("GET", "/ping", 200, 0.001, 1, "r2", "127.0.0.1")
        assert pending() == b"", "ordinary lines wait in the buffer"
        log.record("POST", "/invocations", 500, 0.002, 40, "r3", "127.0.0.1")
        written = pending().splitlines()
        assert [json.loads(x)["http"]["request_id"] for x in written] == ["r1", "r2", "r3"]
        for i in range(200):  # fills the buffer: written without waiting for the timer
            log.record("GET", "/ping", 200, 0.001, 1, f"b{i}", "127.0.0.1")
        assert pending(), "a full buffer is written"
        log.flush()

    asyncio.run(scenario())
    os.close(write_fd)
    os.close(read_fd)


def test_by_default_only_errors_are_logged(served, start_server, kit):
    server = start_server(served.clf_bundle, label="access-log-default")
    frame = kit.churn_frame(2, seed=3)
    assert server.post("/invocations", {"dataframe_split": frame.to_dict("split")}).status == 200
    assert server.get("/nope").status == 404
    assert server.post("/invocations", b"{").status == 400
    assert server.stop() == 0
    lines = _access_lines(server.log_path.read_text())
    assert [(x["http"]["path"], x["http"]["status"]) for x in lines] == [
        ("/nope", 404),
        ("/invocations", 400),
    ]
