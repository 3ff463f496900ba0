"""``/metrics`` of a server with two workers: every scrape, whichever worker answers it, counts the
requests of both (before, each scrape showed only its own worker's, so counters jumped)."""

from __future__ import annotations

import re
import signal
import time

from mlflow_deploy_plugins.serving.metrics_shared import SNAPSHOT_S

INVOCATIONS_200 = re.compile(
    r'^mlflow_deploy_requests_total\{route="/invocations",status="200"\} (\S+)$', re.MULTILINE
)


def test_every_scrape_counts_every_worker(served, start_server, kit):
    server = start_server(served.clf_bundle, "--workers", "2", label="metrics-workers")
    frame = kit.churn_frame(2, seed=9)
    body = {"dataframe_split": frame.to_dict("split")}
    served_by: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + 20
    while (len(served_by) < 2 or sent < 40) and time.monotonic() < deadline:
        reply = server.post("/invocations", body)  # a new connection each time
        assert reply.status == 200, reply.text
        worker = reply.headers["x-request-id"].rsplit("-", 1)[0]
        served_by[worker] = served_by.get(worker, 0) + 1
        sent += 1
    assert len(served_by) == 2, "every request went to the same worker"
    time.sleep(SNAPSHOT_S + 0.5)  # every worker has shared its counts since
    answered_by = set()
    for _ in range(12):
        reply = server.get("/metrics")
        assert reply.status == 200
        answered_by.add(reply.headers["x-request-id"].rsplit("-", 1)[0])
        counts = INVOCATIONS_200.findall(reply.text)
        assert counts == [f"{sent}"] or [float(c) for c in counts] == [float(sent)], reply.text
        assert 'mlflow_deploy_model_info{name="churn-onnx",version="1"} 1' in reply.text
    assert len(answered_by) == 2, "both workers answered a scrape"
    assert server.stop(signal.SIGTERM) == 0
