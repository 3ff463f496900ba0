"""Take the documentation's screenshots with headless Chromium (Debian's ``chromium``).

- ``docs/images/drift-report.png``: the drift HTML report the main job's drift run logged;
- ``docs/images/mlflow-ui-onnx-version.png``: the MLflow UI page of the ONNX twin's version, with
  its parity and drift tags.

Usage: ``python docs/screenshots/make_screenshots.py [--workdir DIR]``. Runs the main job
(``examples/quickstart.py --target local``) in DIR (default: a new temporary directory) unless DIR
already holds its ``mlflow.db``, then starts ``mlflow server`` over that store on a free
127.0.0.1 port for the UI shot.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_logger = logging.getLogger("screenshots")
ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("headless Chromium is needed: apt-get install chromium")


def screenshot(url: str, output: Path, width: int = 1400, height: int = 1000, wait_ms: int = 8000):
    """Render ``url`` (JavaScript runs for ``wait_ms`` of virtual time) into the PNG ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}",
        f"--screenshot={output}", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not output.is_file():
        raise RuntimeError(f"chromium could not render {url}: {done.stderr[-800:]}")
    _logger.info("%s: %d bytes", output, output.stat().st_size)
    return output


#: Lets every scrollable box in the page grow to its content, so a full-page capture shows it all
#: (the registry page keeps its tags in a small scrolling box).
_UNCLIP = """
for (const el of document.querySelectorAll('*')) {
  const style = getComputedStyle(el);
  if (/(auto|scroll)/.test(style.overflowY) && el.scrollHeight > el.clientHeight + 4) {
    el.style.maxHeight = 'none'; el.style.height = 'auto'; el.style.overflowY = 'visible';
  }
}
"""


def screenshot_unclipped(url: str, output: Path, width: int, height: int, wait_s: float = 12):
    """Like :func:`screenshot`, through the DevTools protocol: scrolling boxes are expanded
    first (needs the ``websockets`` package; without it, the plain screenshot)."""
    try:
        from websockets.sync.client import connect
    except ImportError:
        return screenshot(url, output, width, height, wait_ms=int(wait_s * 1000))
    import base64
    import json

    port = free_port()
    browser = subprocess.Popen(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            "about:blank",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    tab = next(t for t in json.loads(r.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        with connect(tab["webSocketDebuggerUrl"], max_size=None) as ws:
            ids = iter(range(1, 1000))

            def call(method: str, **params):
                ident = next(ids)
                ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv())
                    if message.get("id") == ident:
                        return message.get("result", {})

            call("Page.enable")
            call("Page.navigate", url=url)
            time.sleep(wait_s)  # the single-page app fetches and renders
            call("Runtime.evaluate", expression=_UNCLIP)
            time.sleep(1)
            metrics = call("Page.getLayoutMetrics")["cssContentSize"]
            shot = call(
                "Page.captureScreenshot",
                format="png",
                captureBeyondViewport=True,
                clip={
                    "x": 0,
                    "y": 0,
                    "width": width,
                    "height": max(height, metrics["height"]),
                    "scale": 1,
                },
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(base64.b64decode(shot["data"]))
        _logger.info("%s: %d bytes", output, output.stat().st_size)
        return output
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: Path):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not answer in 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="screenshots-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "mlflow.db").is_file():
        _logger.info("Running the main job in %s (--target local) ...", workdir)
        quickstart = [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--target", "local"]
        subprocess.run(quickstart, cwd=workdir, check=True, stdout=subprocess.DEVNULL)

    import mlflow

    os.chdir(workdir)  # the store's artifact root is relative to where the main job ran
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    twin = max(client.search_model_versions("name LIKE '%-onnx'"), key=lambda v: int(v.version))
    monitoring = client.get_experiment_by_name(f"{twin.name}-monitoring")
    (drift_run,) = client.search_runs(
        [monitoring.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    report = mlflow.artifacts.download_artifacts(
        f"runs:/{drift_run.info.run_id}/drift_report.html", dst_path=str(workdir / "report")
    )
    screenshot(Path(report).as_uri(), IMAGES / "drift-report.png", height=1400, wait_ms=15000)
    with mlflow_server(workdir) as url:
        page = f"{url}/#/models/{twin.name}/versions/{twin.version}"
        screenshot_unclipped(page, IMAGES / "mlflow-ui-onnx-version.png", 1500, 2300)


if __name__ == "__main__":
    main()
