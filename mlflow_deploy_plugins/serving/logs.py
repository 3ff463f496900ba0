"""Structured (JSON Lines) logging for the serving runtime: one object per line on stderr.

Access log records carry their fields as ``extra={"http": {...}}`` so log pipelines get
method, path, status, duration and request id as JSON fields, not as text to parse.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings become records of the ``py.warnings`` logger: one JSON object per line,
    # never a bare text line in the log stream.
    logging.captureWarnings(True)
    # Overflow to inf in a cast or a sum is expected and handled: a value beyond the input's
    # range is refused by name (core/refusals.py, codecs/values.refuse_missing), not warned.
    np.seterr(over="ignore")
