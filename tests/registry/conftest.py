"""Registry tests: conftest's fresh store per test, copied from a pre-migrated one (faster)."""

from __future__ import annotations

import pytest
from helpers import tracking_store


@pytest.fixture
def tracking_uri(tmp_path):
    with tracking_store(tmp_path) as uri:
        yield uri
