"""Where a deployment answers (addresses, free and busy ports) and readiness polling; no Docker,
so every target can use it."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from mlflow_deploy_plugins.errors import InvalidInputError

_logger = logging.getLogger(__name__)


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (or holds) ``host:port``.

    Binds without SO_REUSEPORT: a listener that set it (our own servers) still makes the bind
    fail, so the answer is the same for every kind of listener.

    Args:
        host: the address to bind.
        port: the TCP port.

    Returns:
        Whether the port is taken.

    Raises:
        InvalidInputError: ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores TIME_WAIT leftovers but not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidInputError(
                    f"Address {host!r} is not an address of this machine"
                ) from e
            raise
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick).

    Args:
        host: the address the port must be free on.

    Returns:
        The port number.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def endpoint_url(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 in brackets) of a server bound to ``host``."""
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class NotReadyYet(Exception):
    """Raised by a readiness check to mean "keep polling"."""


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200 (a readiness probe); False on any error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    max_interval_s: float = 0.5,
    what: str = "the deployment",
) -> float:
    """Call ``check`` until it returns True; the poll interval grows to ``max_interval_s``.

    Args:
        check: returns True when ready; may raise :class:`NotReadyYet` (keep polling) or
            anything else to abort (e.g. a ``DeploymentError`` when the server exited).
        timeout_s: the bound.
        interval_s: the first poll interval.
        max_interval_s: the largest poll interval.
        what: names the thing waited for in the timeout message.

    Returns:
        The seconds it took.

    Raises:
        TimeoutError: ``check`` did not succeed within ``timeout_s`` seconds.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    delay = interval_s
    while True:
        with contextlib.suppress(NotReadyYet):
            if check():
                return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} was not ready within {timeout_s:g} s")
        time.sleep(delay)
        delay = min(max_interval_s, delay * 1.5)
