"""``/metrics`` of a server with several workers: every worker's counters, summed.

Each worker keeps its metrics in its own process (updates stay plain attribute operations) and
writes a snapshot of them to ``<directory>/<pid>.json``: every ``SNAPSHOT_S`` seconds, when it
stops, and before it answers a scrape. The worker that answers a scrape adds its own live values
to the latest snapshot of every other worker. Counters and histograms are summed over every
worker that ever ran (a restarted worker's predecessor still counts: a counter never goes down);
gauges are summed over the workers alive now. Because a worker writes its snapshot before it
answers, a later scrape answered by another worker never sees smaller counters than an earlier
one, whichever worker answers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

_logger = logging.getLogger(__name__)

#: How often a worker writes its snapshot without being asked.
SNAPSHOT_S = 1.0


class SharedMetrics:
    """One worker's side of the shared directory.

    Args:
        directory: created by the supervisor before it forks, removed when it stops.
        pid: this worker's process id (its file name).
    """

    def __init__(self, directory: str | os.PathLike[str], pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = pid or os.getpid()
        self.path = self.directory / f"{self.pid}.json"

    def write(self, snapshot: dict[str, Any]) -> None:
        """Replace this worker's snapshot atomically (readers never see half a file)."""
        tmp = self.directory / f".{self.pid}.json.tmp"
        try:
            tmp.write_bytes(orjson.dumps(snapshot))
            os.replace(tmp, self.path)
        except OSError as e:
            _logger.warning("Could not write the metrics snapshot %s: %s", self.path, e)

    def others(self) -> list[tuple[dict[str, Any], bool]]:
        """``(snapshot, alive)`` of every other worker that wrote one."""
        found = []
        for path in self.directory.glob("*.json"):
            if path.stem == str(self.pid) or not path.stem.isdigit():
                continue
            try:
                snapshot = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # replaced or removed meanwhile: the next scrape reads it
            found.append((snapshot, _alive(int(path.stem))))
        return found


def merge(own: dict[str, Any], others: list[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """``own`` plus the other workers' values: counters and histograms summed over all of them,
    gauges over the live ones (a metric with ``"aggregate": "max"`` takes the largest value)."""
    merged = {
        name: {**m, "children": {k: _copy(v) for k, v in m["children"].items()}}
        for name, m in own.items()
    }
    for snapshot, alive in others:
        for name, metric in snapshot.items():
            target = merged.get(name)
            if target is None or target["type"] != metric["type"]:
                continue  # a metric this version does not know
            if metric["type"] == "gauge" and not alive:
                continue
            children = target["children"]
            for key, value in metric["children"].items():
                if key not in children:
                    children[key] = _copy(value)
                elif metric["type"] == "histogram":
                    counts, total = children[key]
                    children[key] = [
                        [a + b for a, b in zip(counts, value[0], strict=True)],
                        total + value[1],
                    ]
                elif metric.get("aggregate") == "max":
                    children[key] = max(children[key], value)
                else:
                    children[key] = children[key] + value
    return merged


def _copy(value: Any) -> Any:
    return [list(value[0]), value[1]] if isinstance(value, list) else value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
