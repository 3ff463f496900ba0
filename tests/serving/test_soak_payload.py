"""Soak: two workers under load log payloads onto a disk that fills up, 200 clients stall their
uploads, one worker is SIGKILLed and restarted, the server is stopped with SIGTERM. Every request
is answered, memory stays bounded, and nothing the metrics counted as written is missing from disk
(the killed worker loses at most what it had queued, and that was never counted)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlflow_deploy_plugins.core.payload_format import list_files, read_records

METRIC = re.compile(r"^(mlflow_deploy_payload_log_records_\w+_total)(\{[^}]*\})? (\S+)$", re.M)


def _counts(metrics_text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, labels, value in METRIC.findall(metrics_text):
        key = name + (labels or "")
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


@pytest.mark.slow
@pytest.mark.parametrize("small_disk", ["256k"], indirect=True)
def test_full_disk_worker_kill_and_sigterm_lose_nothing_counted(
    served, start_server, kit, small_disk
):
    logs = small_disk / "payloads"
    server = start_server(
        served.clf_bundle,
        "--workers",
        "2",
        "--payload-log",
        str(logs),
        "--payload-log-file-max-bytes",
        "16000",
        "--no-access-log",
        label="soak-payload",
    )
    match = re.search(r"Supervising 2 workers \(pids \[(\d+), (\d+)\]\)", server.log())
    assert match, server.log()
    victim = int(match.group(1))
    body = {"dataframe_split": kit.churn_frame(4, seed=11).to_dict("split")}

    def send(_: int) -> int:
        try:
            return server.post("/invocations", body).status
        except OSError:  # a connection the killed worker had accepted
            return 0

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(send, range(600)))
        os.kill(victim, signal.SIGKILL)  # the supervisor restarts it
        stalled = _stall_uploads(server.port, 200)
        try:
            second = list(pool.map(send, range(900)))
            workers_mb = _workers_rss_mb(server.proc.pid)
        finally:
            for sock in stalled:
                sock.close()
    statuses = first + second
    # 200 x 256 KiB sent and held: bounded by the in-flight body budget, not by the clients.
    assert max(workers_mb) < 400, workers_mb
    # A request that reached the killed worker may fail with a reset; the rest are answered.
    assert statuses.count(200) >= len(statuses) - 8, sorted(set(statuses))
    time.sleep(1.5)  # every live worker has shared its counts
    counted = _counts(server.get("/metrics").text)
    assert server.stop(signal.SIGTERM) == 0
    written = counted["mlflow_deploy_payload_log_records_written_total"]
    write_errors = counted.get(
        'mlflow_deploy_payload_log_records_dropped_total{reason="write_error"}', 0
    )
    on_disk = list(read_records(logs))
    assert write_errors > 0, "the disk filled up"
    assert len(on_disk) >= written > 0, (len(on_disk), counted)
    assert len(on_disk) <= statuses.count(200)
    assert len({r["request_id"] for r in on_disk}) == len(on_disk), "no record twice"
    assert all(f.path.stat().st_size > 0 for f in list_files(logs)), "no empty files"
    assert "restarting it" in server.log()


def _stall_uploads(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that declare 1 MiB, send 256 KiB of it and stall."""
    socks = []
    head = (
        "POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1 << 20}\r\n\r\n"
    ).encode()
    for _ in range(count):
        for attempt in range(5):
            # a SYN the kernel handed to the just-killed worker's listener is reset: a client
            # reconnects (the restarted worker and the other one answer)
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionResetError:
                if attempt == 4:
                    raise
                time.sleep(0.05)
        socks.append(sock)
        # refused (503: body budget or connection cap) and closed is bounded too
        with contextlib.suppress(OSError):
            sock.sendall(head + b" " * (256 << 10))
    return socks


def _workers_rss_mb(supervisor: int) -> list[float]:
    """VmRSS in MB of each worker (the supervisor's children)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    sizes = []
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return sizes
