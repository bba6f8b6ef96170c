"""Agents download a message's attachment through the channel that received it.

A customer's attachments only reference media at the provider (a media id, or a URL that
needs the channel's credentials and may expire), so the gateway fetches it on request through the
adapter's optional `MediaSource` capability (or `MessageMediaSource`, for channels such as
email whose attachments are inside the stored message). The adapter owns which hosts it
contacts (the server-side request forgery guard lives with the provider knowledge); this
handler only checks who may see the message and shapes the answer.

The bytes come from a customer through a provider, so they are served as untrusted content:
`nosniff`, a sandboxing CSP, and `attachment` disposition for anything a browser could run
(HTML, SVG, scripts) so the agent inbox, served from the same origin, cannot be scripted.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import structlog
from aiohttp import web

from gateway.api.http import error_response
from gateway.appkeys import RUNTIME
from gateway.channels import MediaSource, MessageMediaSource
from gateway.errors import ChannelError, NotFound
from gateway.model import Direction
from gateway.sink import shown_filename

log = structlog.get_logger("gateway.api.media")

routes = web.RouteTableDef()

FALLBACK_TYPE = "application/octet-stream"
# `type/subtype` with optional parameters; anything else is not trusted as a content type.
MIME_TYPE = re.compile(
    r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;\s*[\w.+-]+=[\w.+\"-]+)*$", re.ASCII
)
# Shown inline: media types a browser renders without running anything.
_INLINE = re.compile(
    r"^(image/(png|jpeg|gif|webp)|audio/[\w.+-]+|video/[\w.+-]+|application/pdf)(;|$)", re.ASCII
)
_SAFE_NAME = re.compile(r"[^\w.+-]", re.ASCII)


def safe_content_type(*candidates: str | None) -> str:
    """Return the first well-formed media type given (they come from providers), else bytes."""
    for candidate in candidates:
        if candidate and MIME_TYPE.match(candidate.strip()):
            return candidate.strip()
    return FALLBACK_TYPE


def content_disposition(content_type: str, filename: str | None, fallback: str) -> str:
    """`inline` only for types a browser shows without running them; an ASCII-safe name,
    and the real one as `filename*` (RFC 6266, RFC 5987) when that differs.

    Without `filename*`, `résumé façade.pdf` was saved as `r_sum__fa_ade.pdf`: browsers
    take the UTF-8 name from `filename*` and older clients keep the ASCII fallback.
    """
    mode = "inline" if _INLINE.match(content_type.lower()) else "attachment"
    name = _SAFE_NAME.sub("_", filename or fallback)[:128] or fallback
    value = f'{mode}; filename="{name}"'
    real = _real_name(filename)
    if real and real != name:
        value += f"; filename*=UTF-8''{quote(real, safe=_ATTR_CHARS)}"
    return value


_ATTR_CHARS = "!#$&+-.^_`|~"
"""RFC 5987 attr-char beyond letters and digits: sent as they are, all else percent-encoded."""


def _real_name(filename: str | None) -> str | None:
    """The name as the customer's mail gave it (`shown_filename`), at most 255 characters."""
    shown = shown_filename(filename) if filename else None
    return shown[:255] if shown else None


@routes.get("/api/v1/conversations/{id}/messages/{message_id}/attachments/{index}")
async def attachment(request: web.Request) -> web.StreamResponse:
    """Stream one attachment of a message to an agent allowed to preview its conversation."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    conversation = await runtime.actions.visible(request.match_info["id"], agent)
    message_id = request.match_info["message_id"]
    message = await runtime.store.get_message(message_id)
    if message is None or message.conversation_id != conversation.id:
        raise NotFound(f"no message {message_id} in conversation {conversation.id}")
    if message.direction != Direction.IN:
        # An agent's attachment is at the URL the agent gave: fetching it here would lend the
        # channel's credentials to whatever that URL names (the provider's own API included).
        raise NotFound(f"message {message_id} is an agent's: its attachments are at their URLs")
    raw_index = request.match_info["index"]
    index = int(raw_index) if raw_index.isascii() and raw_index.isdigit() else -1
    if not 0 <= index < len(message.attachments):
        raise NotFound(f"message {message_id} has no attachment {raw_index}")
    found = message.attachments[index]
    adapter = runtime.adapters.get(message.channel)
    if not isinstance(adapter, MessageMediaSource | MediaSource):
        raise NotFound(f"channel {message.channel} cannot download media")
    try:
        if isinstance(adapter, MessageMediaSource):
            media = await adapter.fetch_message_media(message, found)
        else:
            media = await adapter.fetch_media(found)
    except ChannelError as exc:
        log.warning(
            "media.fetch_failed",
            channel=message.channel,
            message_id=message_id,
            index=index,
            error=type(exc).__name__,
            provider_code=exc.provider_code,
        )
        return error_response(502, "media_unavailable", exc.message or "the provider refused")
    content_type = safe_content_type(media.mime_type, found.mime_type)
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Length": str(len(media.data)),
            "Content-Disposition": content_disposition(
                content_type, found.filename, f"{message_id}-{index}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        }
    )
    await response.prepare(request)
    await response.write(media.data)
    await response.write_eof()
    return response
