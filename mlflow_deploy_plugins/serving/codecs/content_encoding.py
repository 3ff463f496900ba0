"""Request bodies sent with ``Content-Encoding`` (gzip, deflate; tritonclient's
``request_compression_algorithm``) -> the bytes the codecs read, never more than a cap.

The caller looks the header up and calls ``decode_body`` only when it is present, so a plain
request pays one dict lookup.
"""

from __future__ import annotations

import zlib

from mlflow_deploy_plugins.serving.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: Codings we decode, and the ``Accept-Encoding`` a 415 names (RFC 9110 section 15.5.16).
SUPPORTED = ("gzip", "deflate")
_ACCEPT = [("Accept-Encoding", ", ".join(SUPPORTED))]
#: zlib window bits: gzip wrapper, zlib wrapper (HTTP's "deflate"), raw deflate (sent by some).
_GZIP, _ZLIB, _RAW = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS


def decode_body(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """``body`` with every coding of ``content_encoding`` undone (last applied first).

    Raises:
        UnsupportedMediaType: a coding other than gzip, deflate (x-gzip) or identity.
        BadRequest: the data is not valid for its coding.
        PayloadTooLarge: the decoded body would exceed ``max_bytes``.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, _GZIP, coding, max_bytes)
        elif coding == "deflate":
            try:
                body = _inflate(body, _ZLIB, coding, max_bytes)
            except BadRequest:
                body = _inflate(body, _RAW, coding, max_bytes)
        else:
            raise UnsupportedMediaType(
                f"Unsupported Content-Encoding {coding[:40]!r}; supported: "
                f"{', '.join(SUPPORTED)} (or none)",
                field="Content-Encoding",
                headers=list(_ACCEPT),
            )
    return body


def _inflate(data: bytes, wbits: int, coding: str, max_bytes: int) -> bytes:
    """Decode one coding, stopping at ``max_bytes + 1`` bytes out (no zip bomb is expanded);
    gzip may hold several members (RFC 1952), each is decoded."""
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        engine = zlib.decompressobj(wbits)
        try:
            chunk = engine.decompress(rest, max_bytes + 1 - size)
        except zlib.error as e:
            raise BadRequest(
                f"The body is not valid {coding} data ({e})", field="Content-Encoding"
            ) from None
        size += len(chunk)
        out.append(chunk)
        if size > max_bytes or engine.unconsumed_tail:
            raise PayloadTooLarge(
                f"The body decompresses to more than the limit of {max_bytes} bytes",
                field="Content-Encoding",
            )
        if not engine.eof:
            raise BadRequest(f"The body is truncated {coding} data", field="Content-Encoding")
        rest = engine.unused_data
        if not rest or wbits != _GZIP:
            if rest:
                raise BadRequest(
                    f"The body has {len(rest)} bytes after the {coding} data",
                    field="Content-Encoding",
                )
            return b"".join(out) if len(out) > 1 else out[0]
