"""The documentation site (mkdocs.yml, docs/) builds with warnings as errors: every page is in the
navigation, every link and anchor between pages resolves, the theme renders offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strict_with_every_page_in_the_nav(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        built = tmp_path / "site" / ("" if page.name == "index" else str(page)) / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"
    home = (tmp_path / "site" / "index.html").read_text()
    assert "fonts.googleapis.com" not in home  # renders offline
