"""Process management: one event loop per worker process, SO_REUSEPORT across workers,
readiness only after the model is loaded and warmed up, graceful stop on SIGTERM/SIGINT
(stop accepting, finish in-flight requests, flush the payload log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from mlflow_deploy_plugins.serving.app import ServingApp, warm_up
from mlflow_deploy_plugins.serving.http import (
    HttpLimits,
    event_loop_factory,
    shutdown,
    start_server,
)
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.payload_log import PayloadLogger
from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 20.0


def run(bundle_dir: str, settings: ServingSettings) -> int:
    """Serve ``bundle_dir`` until SIGTERM/SIGINT; returns the process exit code."""
    if settings.workers <= 1:
        return serve_worker(bundle_dir, settings, reuse_port=False)
    return _supervise(bundle_dir, settings)


def serve_worker(bundle_dir: str, settings: ServingSettings, reuse_port: bool) -> int:
    started = time.perf_counter()
    model = ServedModel(bundle_dir, intra_op_threads=settings.intra_op_threads)
    metrics = ServingMetrics()
    name = settings.model_name or model.name
    payload_log = PayloadLogger.from_settings(settings, name, model.version, metrics)
    app = ServingApp(model, settings, metrics=metrics, payload_log=payload_log)
    warm_up(app)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(app, settings, reuse_port, started))
    return 0


async def _serve(app: ServingApp, settings: ServingSettings, reuse_port: bool, started: float):
    loop = asyncio.get_running_loop()
    limits = HttpLimits(
        max_body_bytes=settings.max_body_bytes,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    server = await start_server(
        app.handle,
        settings.host,
        settings.port,
        reuse_port=reuse_port,
        limits=limits,
        on_response=app.on_response,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.ready = True
    _logger.info(
        "Serving %s v%s on http://%s:%d (pid %d, ready in %.2fs; V2 /v2/models/%s/infer, "
        "MLflow /invocations)",
        app.name,
        app.version,
        settings.host,
        settings.port,
        os.getpid(),
        time.perf_counter() - started,
        app.name,
    )
    await stop.wait()
    _logger.info("Stopping: finishing in-flight requests")
    app.ready = False
    await shutdown(server, timeout=SHUTDOWN_TIMEOUT_S)
    if app.payload_log is not None:
        await loop.run_in_executor(None, app.payload_log.close)
    _logger.info("Stopped")


def _supervise(bundle_dir: str, settings: ServingSettings) -> int:
    """Fork one worker per ``settings.workers``; forward SIGTERM/SIGINT; restart crashed ones."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve_worker(bundle_dir, settings, reuse_port=True)
            except BaseException:
                _logger.exception("Worker %d failed", slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = slot

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(settings.workers):
        spawn(slot)
    _logger.info("Supervising %d workers (pids %s)", len(children), sorted(children))
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if stopping or slot is None:
            continue
        _logger.error("Worker %d (pid %d) exited with %d: restarting it", slot, pid, code)
        exit_code = 1
        time.sleep(0.5)
        spawn(slot)
    return 0 if stopping else exit_code
