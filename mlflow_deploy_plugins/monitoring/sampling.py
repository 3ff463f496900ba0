"""A bounded, uniform random sample of rows from a stream of DataFrame chunks.

Every row gets a uniform random key and the sample is the ``size`` rows with the smallest keys
("bottom-k", equivalent to reservoir sampling without replacement). Chunks are filtered against
the current k-th smallest key before they are kept, so memory stays at about 1.5 times the sample
and the work per row, once the sample is full, is one random number and one comparison. A reader
can draw keys before it parses anything (``draw``) and skip what cannot enter (``bound``).
``Sample`` is what reading one source returns: the rows kept and what the read found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlflow_deploy_plugins.errors import InvalidInputError

_DRAW = 1 << 16  # keys drawn from the generator at a time


class RowReservoir:
    """Keep a uniform random sample of at most ``size`` rows of everything ``add``-ed."""

    def __init__(self, size: int, seed: int | None = 0):
        if int(size) < 1:
            raise InvalidInputError(f"sample_size must be >= 1, got {size}")
        self.size = int(size)
        self.rows_seen = 0
        #: Once full: a row whose key is not below it can never enter the sample.
        self.bound = 1.0
        self._rng = np.random.default_rng(seed)
        self._buffer: list[float] = []
        self._position = 0
        self._chunks: list[pd.DataFrame] = []
        self._keys: list[np.ndarray] = []
        self._buffered = 0

    def draw(self, n: int) -> list[float]:
        """The keys of the next ``n`` rows (one stream: a row's key does not depend on chunking)."""
        end = self._position + n
        if end > len(self._buffer):
            fresh = self._rng.random(max(_DRAW, n)).tolist()
            self._buffer = self._buffer[self._position :] + fresh
            self._position, end = 0, n
        keys = self._buffer[self._position : end]
        self._position = end
        return keys

    def skip(self, n: int) -> None:
        """Count ``n`` rows whose keys (already drawn) were all at or above ``bound``."""
        self.rows_seen += n

    def add(self, chunk: pd.DataFrame, keys: np.ndarray | None = None) -> None:
        """Offer every row of ``chunk``; ``keys`` are theirs if already drawn."""
        n = len(chunk)
        if n == 0:
            if not self._chunks:
                self._chunks.append(chunk)  # keeps the columns of an empty source
                self._keys.append(np.empty(0))
            return
        if self.rows_seen == 0:
            self._chunks, self._keys = [], []  # drop an empty placeholder
        self.rows_seen += n
        keys = np.asarray(self.draw(n) if keys is None else keys, dtype=float)
        if self.bound < 1.0:
            keep = np.flatnonzero(keys < self.bound)
            if len(keep) == 0:
                return
            if len(keep) < n:
                chunk, keys = chunk.iloc[keep], keys[keep]
        self._chunks.append(chunk)
        self._keys.append(keys)
        self._buffered += len(chunk)
        if self._buffered >= self.size + max(self.size // 2, 1):
            self._compact()

    def _compact(self) -> None:
        if len(self._chunks) == 1 and self._buffered <= self.size:
            return
        frame = (
            pd.concat(self._chunks, ignore_index=True) if len(self._chunks) > 1 else self._chunks[0]
        )
        keys = np.concatenate(self._keys)
        if len(keys) > self.size:
            index = np.argpartition(keys, self.size - 1)[: self.size]
            index.sort()  # keep arrival order
            frame, keys = frame.iloc[index], keys[index]
            self.bound = float(keys.max())
        self._chunks = [frame.reset_index(drop=True)]
        self._keys = [keys]
        self._buffered = len(keys)

    def result(self) -> pd.DataFrame | None:
        """The sample (rows in arrival order), or None when nothing was added."""
        if not self._chunks:
            return None
        self._compact()
        return self._chunks[0].reset_index(drop=True)


@dataclass
class Sample:
    """A sample of a data source and what reading it found."""

    frame: pd.DataFrame  # at most sample_size rows
    rows_seen: int  # rows in the source (in the window) before sampling
    columns: list[str]  # every column the source holds, sampled or not
    origin: str  # dataframe | parquet | csv | jsonl | payload-log
    location: str
    files_read: int = 0
    files_skipped: int = 0  # payload-log files outside the window, skipped by name
    bad_lines: int = 0
    models: dict[str, int] = field(default_factory=dict)  # payload logs: "name/version" -> records


def finish_sample(reservoir: RowReservoir, columns, origin, location, side, **extra) -> Sample:
    """The reservoir's sample as a Sample; an empty source is an error naming it."""
    frame = reservoir.result()
    if frame is None or reservoir.rows_seen == 0:
        raise InvalidInputError(f"The {side} data {location} has no rows")
    return Sample(frame, reservoir.rows_seen, list(columns), origin, location, **extra)
