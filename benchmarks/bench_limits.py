"""Resource limits under attack, ours next to the servers users would otherwise run: the same
hostile clients against each server on the same model, memory and probe latency measured.

Attacks (each on a fresh server):

- **stalled uploads**: ``--uploads`` connections each declare an 8 MiB body (our default
  ``max_body_bytes``: a body any server here accepts), send 7 MiB of it and stall. Measured: RSS before, while they hang and 2 s after they are closed; how many were
  refused; how long a readiness probe on a new connection takes while they hang.
- **idle connections**: ``--idle`` connections that never send a byte. Measured: how many are
  still open after ``--idle-wait`` seconds, and the probe latency meanwhile.
- **header flood**: one request with 40,000 one-byte headers (~160 KB in all). Measured: the
  status answered.

Run (needs the bench_serving.py environment: the package with its ``all`` extra, fastapi)::

    python benchmarks/bench_limits.py [--servers ours,uvicorn,fastapi] [--uploads 64]

Numbers are memory and statuses, not speed: they hold on a busy machine.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serving as bs  # noqa: E402

MIB = 1024 * 1024


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def probe_ms(port: int, path: str = "/v2/health/ready", timeout: float = 10.0) -> float:
    """Milliseconds for a readiness probe on a new connection (inf: no answer in time)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            if not s.recv(64).startswith(b"HTTP/1.1 200"):
                return float("nan")
    except OSError:
        return float("inf")
    return (time.perf_counter() - t0) * 1000


def _status(s: socket.socket, wait: float = 0.2) -> str:
    """The status a server already answered on ``s`` ("-": none yet, "closed": closed)."""
    s.settimeout(wait)
    try:
        data = s.recv(64)
    except (TimeoutError, BlockingIOError):
        return "-"
    except OSError:
        return "closed"
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "?"


def stalled_uploads(server: bs.ManagedServer, path: str, n: int) -> dict:
    rss0 = sum(r for _, _, r in bs.tree_rss(server.proc.pid))
    chunk = b"1" * MIB
    socks, failed = [], 0
    for _ in range(n):
        try:
            s = _connect(server.port)
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {8 * MIB}\r\n\r\n".encode()
            )
            socks.append(s)
            for _ in range(7):
                s.sendall(chunk)
        except OSError:
            failed += 1  # refused while sending (the server answered and closed)
    time.sleep(1.0)
    statuses = Counter(_status(s, 0.05) for s in socks)
    hanging = statuses.pop("-", 0)
    answered = ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())) or "none"
    if failed:
        answered += f" ({failed} cut off while sending)"
    rss_during = sum(r for _, _, r in bs.tree_rss(server.proc.pid))
    probe = probe_ms(server.port)
    for s in socks:
        s.close()
    time.sleep(2.0)
    rss_after = sum(r for _, _, r in bs.tree_rss(server.proc.pid))
    return {
        "RSS before MiB": f"{rss0:.0f}",
        "RSS while stalled MiB": f"{rss_during:.0f}",
        "RSS after MiB": f"{rss_after:.0f}",
        "uploads held (stalled)": f"{hanging}/{n}",
        "uploads answered": answered,
        "probe ms while stalled": _ms(probe),
    }


def idle_connections(server: bs.ManagedServer, n: int, wait_s: float) -> dict:
    socks = []
    for _ in range(n):
        try:
            socks.append(_connect(server.port))
        except OSError:
            break
    probe = probe_ms(server.port)
    time.sleep(wait_s)
    open_after = sum(1 for s in socks if _status(s, 0.01) == "-")
    for s in socks:
        s.close()
    return {
        "idle conns opened": str(len(socks)),
        f"still open after {wait_s:.0f} s": str(open_after),
        "probe ms with idle conns": _ms(probe),
    }


def header_flood(server: bs.ManagedServer) -> dict:
    headers = "".join(f"x{i}: y\r\n" for i in range(40_000))
    try:
        with _connect(server.port) as s:
            s.settimeout(10)
            s.sendall(f"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
            data = s.recv(64)
            status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    except OSError as e:
        status = f"closed ({type(e).__name__})"
    return {"40,000 headers": status}


def _ms(v: float) -> str:
    return "no answer" if v == float("inf") else "-" if v != v else f"{v:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="ours,uvicorn,fastapi")
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--idle", type=int, default=3000)
    parser.add_argument("--idle-wait", type=float, default=12.0)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    import os
    import shutil

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    try:
        print(f"Work dir {workdir}; training + promoting + bundling ...", flush=True)
        x, _, _, bundle, source_dir = bs.prepare_model(workdir)
        bs.write_bodies(x, workdir, bundle.manifest.io.inputs[0].name)
        fake = argparse.Namespace(
            baseline_tree=None,
            no_tensor_rows=True,
            default_config=True,
            mlserver_parallel_workers=0,
        )
        specs = bs.server_specs(fake, workdir, "", bundle, source_dir, None)
        infer = f"/v2/models/{bundle.manifest.name}/infer"
        rows: dict[str, dict] = {}
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            label, factory, _ = specs[name]
            print(f"== {label}", flush=True)
            row: dict[str, str] = {}
            for attack in ("uploads", "idle", "headers"):
                server = factory()
                try:
                    server.start()
                    if attack == "uploads":
                        row.update(stalled_uploads(server, infer, args.uploads))
                    elif attack == "idle":
                        row.update(idle_connections(server, args.idle, args.idle_wait))
                    else:
                        row.update(header_flood(server))
                    alive = server.proc.poll() is None and probe_ms(server.port) < 1000
                    row[f"serving after {attack}"] = "yes" if alive else "NO"
                finally:
                    server.stop()
            rows[name] = row
            print("   " + "; ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = list(next(iter(rows.values())))
    table = [["measure", *rows], *([k, *(rows[s].get(k, "") for s in rows)] for k in keys)]
    render = bs.render_markdown if args.markdown else bs.render_text
    print()
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
