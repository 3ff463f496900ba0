"""The HTML report as a person sees it: rendered by headless Chromium with no network at all."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from mlflow_deploy_plugins.monitoring import drift_report

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _chromium(url: str, user_data: Path, *mode: str) -> subprocess.CompletedProcess:
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={user_data}",
        # no network: every request would go to a closed local port, every name fails to resolve
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        # let the report's JavaScript draw before the screenshot / DOM dump
        "--virtual-time-budget=15000",
        "--window-size=1400,3000",
        *mode,
        url,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (.ci/run installs it; with CI=true a missing one fails)",
)
def test_html_report_renders_offline_and_shows_the_drifted_columns(
    store, payload_logs, kit, tmp_path
):
    result = drift_report(f"models:/{kit.ONNX}/1", str(payload_logs.shifted.dir))
    html_path = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path="drift_report.html", dst_path=str(tmp_path)
        )
    )
    html = html_path.read_text(encoding="utf-8")
    # self-contained: Evidently inlines its JavaScript bundle and icon font; nothing is fetched
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert not re.search(r"<link[^>]*\bhref=", html)
    assert not re.search(r"url\(\s*['\"]?https?:", html)

    url = html_path.as_uri()
    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "Dataset Drift is detected" in text
    assert "Drift is detected for 50.0% of columns (5 out of 10)" in text
    for column in kit.SHIFTED + ["age", "city", "proba_True"]:
        assert re.search(rf"\b{re.escape(column)}\b", text), column

    png = tmp_path / "report.png"
    shot = _chromium(url, tmp_path / "profile-shot", f"--screenshot={png}")
    assert shot.returncode == 0, shot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    keep = Path(__file__).resolve().parents[2] / ".test-logs"
    if keep.is_dir():  # for a person to look at after a run
        shutil.copy(png, keep / "drift_report.png")
