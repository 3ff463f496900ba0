"""What a handler's result becomes: a Response now, or a ``Pending`` one the batcher sets later
(the connection is called back synchronously, no asyncio Future per request), or an asyncio
Future (executor work, coroutine handlers) turned into a Pending."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mlflow_deploy_plugins.serving.errors import NotReady
from mlflow_deploy_plugins.serving.wire import Response, error_response, internal_error

_logger = logging.getLogger(__name__)


class Pending:
    """A response the app gives later (the batcher's), without an asyncio Future.

    The connection waiting for it is called back synchronously when it is set, so a batched
    request costs no Future, no loop callback and no extra loop iteration before its response
    is written. The first :meth:`set` wins; later ones are ignored. Inside
    :func:`answering_together` the callbacks wait until the block ends and each runs once, so a
    connection with several requests in one batch writes their responses in one go.
    """

    __slots__ = ("response", "_then")

    #: Callbacks held by :func:`answering_together` (None: call at once).
    _held: list[Callable[[], None]] | None = None

    def __init__(self) -> None:
        self.response: Response | None = None
        self._then: Callable[[], None] | None = None

    def set(self, response: Response) -> None:
        if self.response is not None:
            return
        self.response = response
        then = self._then
        if then is not None:
            self._then = None
            held = Pending._held
            if held is None:
                then()
            else:
                held.append(then)

    def then(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the response is set (the connection's hook)."""
        self._then = callback


@contextmanager
def answering_together() -> Iterator[None]:
    """Hold the callbacks of the Pendings set in this block; at its end call each distinct one
    once (a batch answering several requests of one connection: one write, not one each).
    Runs on the event loop's thread only."""
    if Pending._held is not None:  # nested: the outer block calls them
        yield
        return
    held: list[Callable[[], None]] = []
    Pending._held = held
    try:
        yield
    finally:
        Pending._held = None
        for then in dict.fromkeys(held):  # a connection's bound method once
            try:
                then()
            except Exception:
                _logger.exception("writing a response failed")


def settle(result: object, request_id: str) -> Response | Pending:
    """A handler's result as the connection keeps it: a Response, or a Pending one.

    An asyncio Future (what a coroutine-based handler or an executor gives) becomes a Pending
    set from the future's outcome (see :func:`resolve`); anything else goes through
    :func:`resolve` now.
    """
    if type(result) is Pending:
        return result if result.response is None else result.response
    if isinstance(result, asyncio.Future) and not result.done():
        pending = Pending()
        result.add_done_callback(lambda f: pending.set(resolve(f, request_id)))
        return pending
    return resolve(result, request_id)


def resolve(result: object, request_id: str) -> Response:
    """A handler's result as a Response, once it is not a pending Future any more.

    A cancelled Future is a 503 (the app is going away), a failed one goes through
    :func:`error_response`, and anything but a Response is our bug: a logged 500.
    """
    if isinstance(result, asyncio.Future):
        if result.cancelled():
            return error_response(NotReady("service unavailable"), request_id)
        exc = result.exception()
        if exc is not None:
            return error_response(exc, request_id)
        result = result.result()
        what = "handler future gave"
    else:
        what = "handler returned"
    if isinstance(result, Response):
        return result
    _logger.error("%s %s, not a Response (request_id=%s)", what, type(result), request_id)
    return internal_error(request_id)
