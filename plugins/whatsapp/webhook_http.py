"""Small HTTP pieces of the webhook endpoint: a size-capped body read and the JSON answers.

The body is read in full before anything else because both signatures cover the raw bytes;
the cap keeps an unauthenticated caller from making us buffer an unbounded upload.
"""

from __future__ import annotations

from aiohttp import web

TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class BodyTooLarge(Exception):
    """The request body exceeds the channel's webhook limit."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the raw body, refusing (BodyTooLarge) past `limit` bytes without buffering more."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge()
    if declared is not None:
        # Providers send Content-Length: aiohttp reads exactly that many bytes (and no
        # more), in one call, which is much cheaper per request than iterating chunks.
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The gateway's error shape: `{"error": {"code", "message"}}` (DESIGN.md section 5)."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def twiml_ack() -> web.Response:
    """Twilio's "received, no reply" answer: an empty TwiML document."""
    return web.Response(text=TWIML_EMPTY, content_type="text/xml")


def json_ack() -> web.Response:
    """Meta only needs a 200; an empty JSON object keeps the answer well-formed.

    Built from constant bytes: `web.json_response` would run the stdlib JSON encoder on every
    acknowledged webhook.
    """
    return web.Response(body=b"{}", content_type="application/json")
