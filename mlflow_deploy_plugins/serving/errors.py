"""The serving runtime's one error map: each client mistake is a ``ServingError`` with its status.

Handlers raise these; the app turns them into responses in one place (``status``, ``to_body()``,
``headers``), and the HTTP layer answers its own protocol errors (malformed request, too large,
timeouts) with the same classes, so every error body has one shape. Bodies carry a message and
the field at fault, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import orjson

if TYPE_CHECKING:  # numpy comes with iospec: the HTTP layer imports this module without it
    from mlflow_deploy_plugins.core.iospec import SchemaError

_logger = logging.getLogger(__name__)

#: Longest message put in a body: messages may quote client values, which may be huge.
MAX_MESSAGE_CHARS = 1000


class ServingError(Exception):
    """A request the runtime refuses, with the HTTP status that says why.

    Args:
        message: What is wrong and what was expected, for the client.
        field: The column, input, output or parameter at fault, when there is one.
        headers: Extra response headers (e.g. ``Allow`` for 405).
    """

    status: ClassVar[int] = 500
    #: MLflow's error code for the same status (its scoring server's ``error_code``).
    error_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        field: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = list(headers or ())

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"

    def to_body(self) -> bytes:
        """``{"error": message}`` (Open Inference Protocol V2), plus ``"field"`` when known."""
        if self.field is None:
            return orjson.dumps({"error": self.message})
        return orjson.dumps({"error": self.message, "field": self.field})

    def to_mlflow_body(self) -> bytes:
        """The body ``mlflow models serve`` sends for an error: ``{"error_code", "message"}``."""
        body = {"error_code": self.error_code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return orjson.dumps(body)


class BadRequest(ServingError):
    """The body is not a well-formed request of the protocol (malformed JSON, wrong structure)."""

    status = 400
    error_code = "BAD_REQUEST"


class Unauthorized(ServingError):
    status = 401
    error_code = "UNAUTHENTICATED"

    def __init__(
        self,
        message: str = "A valid bearer token is required",
        field: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ):
        super().__init__(message, field, headers or [("WWW-Authenticate", "Bearer")])


class NotFound(ServingError):
    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class MethodNotAllowed(ServingError):
    status = 405
    error_code = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        field: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        *,
        allowed: tuple[str, ...] = (),
    ):
        if allowed and headers is None:
            headers = [("Allow", ", ".join(allowed))]
        super().__init__(message, field, headers)


class RequestTimeout(ServingError):
    """The client stalled mid-request (HTTP layer)."""

    status = 408
    error_code = "BAD_REQUEST"


class PayloadTooLarge(ServingError):
    status = 413
    error_code = "RESOURCE_LIMIT_EXCEEDED"


class UnsupportedMediaType(ServingError):
    status = 415
    error_code = "BAD_REQUEST"


class ExpectationFailed(ServingError):
    """An ``Expect`` header other than ``100-continue`` (HTTP layer)."""

    status = 417
    error_code = "BAD_REQUEST"


class Unprocessable(ServingError):
    """Well-formed, but does not fit the model: unknown or missing input, dtype, shape, no rows."""

    status = 422
    error_code = "INVALID_PARAMETER_VALUE"


class HeadersTooLarge(ServingError):
    """Request line and headers over the limit (HTTP layer)."""

    status = 431
    error_code = "RESOURCE_LIMIT_EXCEEDED"


class Unimplemented(ServingError):
    """A method of a protocol the served model has no signature for (TF Serving's
    ``:classify``/``:regress``), or a transfer coding the server does not implement."""

    status = 501
    error_code = "NOT_IMPLEMENTED"


class NotReady(ServingError):
    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class Busy(ServingError):
    """A resource limit of the server is reached (connections, body bytes in flight): the
    request was fine, retry it later (``Retry-After``)."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 1):
        super().__init__(message, field, [("Retry-After", str(retry_after_s))])


class InternalError(ServingError):
    """Our fault, not the client's: the body stays generic, the details go to the log."""

    status = 500
    error_code = "INTERNAL_ERROR"


def from_schema_error(e: SchemaError) -> Unprocessable:
    """The IOSpec's verdict on the client's data, as a 422 naming the column or input."""
    return Unprocessable(str(e), field=e.field)


def model_error(error: BaseException) -> ServingError:
    """An exception of the model's run as the client sees it: onnxruntime refusing decoded input
    is a client mistake (422); anything else is ours (500, details in the log)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    name = type(error).__name__
    if name in ("InvalidArgument", "Fail", "InvalidGraph") or "INVALID_ARGUMENT" in text:
        return Unprocessable(f"The model rejected the input: {text[:300]}")
    _logger.error("Inference failed: %s: %s", name, text)
    return InternalError("Inference failed")
