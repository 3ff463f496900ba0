"""Process management: one event loop per worker process, SO_REUSEPORT across workers,
readiness only after the model is loaded and warmed up, graceful stop on SIGTERM/SIGINT
(stop accepting, finish in-flight requests, flush the payload log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlflow_deploy_plugins.core.manifest import verify_bundle
from mlflow_deploy_plugins.serving.app import ServingApp, warm_up
from mlflow_deploy_plugins.serving.http import HttpLimits, shutdown, start_server
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.metrics_shared import SNAPSHOT_S, SharedMetrics
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.payload_files import PayloadLogDirectoryError, check_writable
from mlflow_deploy_plugins.serving.payload_log import PayloadLogger
from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 20.0
#: With payload_log_unwritable=unready, how often an unwritable payload log directory is retried.
PAYLOAD_DIR_RECHECK_S = 2.0
#: With a shared port (SO_REUSEPORT), idle keep-alive connections get this long to send one last
#: request (answered with Connection: close) before they are closed: closing them at once races
#: with a client sending on them. The next server on the port takes the reconnections.
SHARED_PORT_IDLE_GRACE_S = 1.0
SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h


def run(bundle_dir: str, settings: ServingSettings) -> int:
    """Serve ``bundle_dir`` until SIGTERM/SIGINT; returns the process exit code."""
    if settings.payload_log_dir is not None:
        # A server that answers but cannot log would drop every record: refuse to start, or
        # (payload_log_unwritable=unready) start unready until the directory is writable.
        try:
            check_writable(Path(settings.payload_log_dir))
        except PayloadLogDirectoryError as e:
            if settings.payload_log_unwritable == "fail":
                raise
            _logger.warning("%s: starting unready until it is writable", e)
    if settings.workers <= 1:
        return serve_worker(bundle_dir, settings, reuse_port=settings.reuse_port)
    # Refuse a bad bundle here, once: a worker failing on it would be restarted forever.
    verify_bundle(bundle_dir)
    return _supervise(bundle_dir, settings)


def serve_worker(
    bundle_dir: str,
    settings: ServingSettings,
    reuse_port: bool,
    on_ready=None,
    metrics_dir: str | None = None,
) -> int:
    started = time.perf_counter()
    model = ServedModel(bundle_dir, intra_op_threads=settings.intra_op_threads)
    metrics = ServingMetrics(shared=SharedMetrics(metrics_dir) if metrics_dir else None)
    name = settings.model_name or model.name
    payload_log = PayloadLogger.from_settings(settings, name, model.version, metrics)
    app = ServingApp(model, settings, metrics=metrics, payload_log=payload_log)
    warm_up(app)
    _run_loop(_serve(app, settings, reuse_port, started, on_ready))
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """``uvloop.new_event_loop`` when installed, else ``asyncio.new_event_loop``.

    For ``asyncio.Runner(loop_factory=...)``, which avoids the (deprecated) policy machinery.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _run_loop(coro) -> None:
    """``asyncio.Runner(loop_factory=...).run(coro)``; by hand on Python 3.10 (no Runner)."""
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(coro)
        return
    loop = event_loop_factory()()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def _serve(
    app: ServingApp, settings: ServingSettings, reuse_port: bool, started: float, on_ready=None
):
    loop = asyncio.get_running_loop()
    limits = HttpLimits.from_settings(settings)
    offload = app.open_offload()
    server = await start_server(
        app.handle,
        settings.host,
        settings.port,
        reuse_port=reuse_port,
        limits=limits,
        on_response=app.on_response,
        authorize=app.early_auth_error if settings.auth_token else None,
    )
    app.in_flight = lambda: server.in_flight
    grpc_server = None
    if settings.grpc_port is not None:
        from mlflow_deploy_plugins.serving.grpc_server import start_grpc

        grpc_server = await start_grpc(
            app, settings.host, settings.grpc_port, settings.max_body_bytes
        )
    recheck = _watch_payload_log_dir(app, settings)
    if reuse_port and settings.reuse_port_takeover:
        steer_new_connections(server, settings.reuse_port_takeover, settings.workers)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.ready = True
    if on_ready is not None:
        on_ready()
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
    share = _every(SNAPSHOT_S, app.metrics.share) if app.metrics.shared is not None else None
    await stop.wait()
    if recheck is not None:
        recheck.cancel()
    _logger.info("Stopping: finishing in-flight requests")
    app.draining = True
    app.ready = False
    grace = SHARED_PORT_IDLE_GRACE_S if reuse_port else 0.0
    if grpc_server is not None:  # stops taking calls, lets the running ones finish
        stopping = asyncio.ensure_future(grpc_server.stop(SHUTDOWN_TIMEOUT_S))
    await shutdown(server, timeout=SHUTDOWN_TIMEOUT_S, idle_grace_s=grace)
    if grpc_server is not None:
        await stopping
    # Every request is answered (or its connection aborted): wait for a run still going.
    await loop.run_in_executor(None, offload.shutdown)
    if app.payload_log is not None:
        await loop.run_in_executor(None, app.payload_log.close)
    if app.access_log is not None:
        app.access_log.flush()
    if share is not None:
        share.cancel()
        app.metrics.share()  # the counters of a stopped worker still count
    _logger.info("Stopped")


def _watch_payload_log_dir(app: ServingApp, settings: ServingSettings):
    """With ``payload_log_unwritable=unready``: the app is unready while the payload log
    directory cannot be written, checked now and every PAYLOAD_DIR_RECHECK_S; returns the
    timer (None when there is nothing to watch)."""
    if settings.payload_log_dir is None or settings.payload_log_unwritable != "unready":
        return None
    directory = Path(settings.payload_log_dir)

    def check() -> None:
        try:
            check_writable(directory)
        except PayloadLogDirectoryError as e:
            if app.unready_reason is None:
                _logger.error("%s: not ready (checked every %ss)", e, PAYLOAD_DIR_RECHECK_S)
            app.unready_reason = str(e)
            return
        if app.unready_reason is not None:
            _logger.info("Payload log directory %s is writable: ready", directory)
        app.unready_reason = None

    check()
    return _every(PAYLOAD_DIR_RECHECK_S, check)


def _every(seconds: float, call):
    """Call ``call`` every ``seconds`` on the running loop; cancel the returned handle to stop.

    Returns:
        An object whose ``cancel()`` stops the repetition.
    """
    loop = asyncio.get_running_loop()

    class _Repeat:
        handle: asyncio.TimerHandle | None = None

        def run(self) -> None:
            call()
            self.handle = loop.call_later(seconds, self.run)

        def cancel(self) -> None:
            if self.handle is not None:
                self.handle.cancel()

    repeat = _Repeat()
    repeat.handle = loop.call_later(seconds, repeat.run)
    return repeat


def steer_new_connections(server, previous: int, workers: int) -> bool:
    """Send every new connection on the shared port to this server's sockets.

    Sockets join a SO_REUSEPORT group in listen order, so the previous server's ``previous``
    sockets hold indexes 0..previous-1 and ours follow. A classic BPF program attached to the
    group returns one of our indexes. Once the previous sockets close, those indexes are out of
    range and the kernel falls back to its hash: the steering ends by itself. Returns False
    where it cannot be attached (not Linux, old kernel): updates then work without it.
    """
    import ctypes
    import socket

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    if workers == 1:
        program = [(0x06, previous)]  # ret #previous
    else:
        random = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM
        # A = random; A %= workers; A += previous; return A
        program = [(0x20, random), (0x94, workers), (0x04, previous), (0x16, 0)]
    code = (SockFilter * len(program))(*(SockFilter(op, 0, 0, k) for op, k in program))
    fprog = SockFprog(len(program), ctypes.cast(code, ctypes.POINTER(SockFilter)))
    try:
        listener = server.sockets[0]
        with socket.fromfd(listener.fileno(), listener.family, listener.type) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except (OSError, IndexError, AttributeError) as e:
        _logger.warning("Could not steer new connections to this server: %s", e)
        return False
    _logger.info("Taking over the port: new connections go to this server")
    return True


def _supervise(bundle_dir: str, settings: ServingSettings) -> int:
    """Fork one worker per ``settings.workers``; forward SIGTERM/SIGINT; restart crashed ones.

    A worker that fails before it ever served (port taken, model not loadable) is not restarted:
    the others are stopped and the exit code is 1, so the failure is seen, not looped over.
    """
    children: dict[int, int] = {}
    stopping = False
    # Where the workers share their metrics (one /metrics answer sums them); RAM-backed if possible.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    metrics_dir = tempfile.mkdtemp(prefix="mlflow-deploy-metrics-", dir=shm)
    # Workers write their pid here once they serve.
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    booted: set[int] = set()
    boot_failed = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve_worker(
                    bundle_dir,
                    settings,
                    reuse_port=True,
                    on_ready=lambda: os.write(ready_w, b"%d\n" % os.getpid()),
                    metrics_dir=metrics_dir,
                )
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
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(ready_r, 4096):
                booted.update(int(p) for p in chunk.split())
        if stopping or slot is None:
            continue
        if pid not in booted:
            _logger.error("Worker %d (pid %d) failed to start (exit %d): stopping", slot, pid, code)
            boot_failed = True
            forward(signal.SIGTERM, None)
            continue
        _logger.error("Worker %d (pid %d) exited with %d: restarting it", slot, pid, code)
        exit_code = 1
        time.sleep(0.5)
        spawn(slot)
    os.close(ready_r)
    os.close(ready_w)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    if boot_failed:
        return 1
    return 0 if stopping else exit_code
