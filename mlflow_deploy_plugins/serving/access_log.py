"""The access log: one JSON line per request, buffered, written to stderr in batches.

Through ``logging``, an access line cost a LogRecord, a formatter and an unbuffered ``write(2)``
per request: half the server's throughput on small requests. Here a line is one ``orjson.dumps``
appended to a buffer; the buffer is written when it holds ``max_buffer`` bytes, ``flush_s`` after
its first line, at once for a server error (5xx), and when the server stops. The lines are the
ones ``logs.JsonFormatter`` writes for the rest of the runtime's logs (same keys, same logger
name), so log pipelines see one format.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson

#: The logger name on every access line (also the name the runtime's other logs would use).
LOGGER = "mlflow_deploy_plugins.serving.access"

_logger = logging.getLogger(__name__)


class AccessLog:
    """Buffered JSON Lines access log on a file descriptor (stderr by default).

    Args:
        fd: where lines go.
        flush_s: longest a line waits in the buffer (needs a running event loop; without one,
            every line is written at once).
        max_buffer: the buffer is written once it holds this many bytes.
    """

    def __init__(self, fd: int = 2, flush_s: float = 0.2, max_buffer: int = 64 * 1024) -> None:
        self.fd = fd
        self.flush_s = flush_s
        self.max_buffer = max_buffer
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def record(
        self,
        method: str,
        path: str,
        status: int,
        duration_s: float,
        size: int,
        request_id: str,
        remote: str | None,
    ) -> None:
        """Append one request's line; write the buffer when it is full or the status is 5xx."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not per request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._buffer += orjson.dumps(
            {
                "ts": f"{self._second_text}.{int((now - second) * 1000):03d}Z",
                "level": "INFO",
                "logger": LOGGER,
                "msg": f"{method} {path} {status}",
                "http": {
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                    "bytes": size,
                    "request_id": request_id,
                    "remote": remote,
                },
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        if status >= 500 or len(self._buffer) >= self.max_buffer:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        """Write what is buffered (called by the timer, on errors, and when the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:  # a closed or full stderr must not take serving down
            _logger.debug("Access log lines lost: %s", e)
