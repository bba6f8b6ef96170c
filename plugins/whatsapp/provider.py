"""The interface the adapter uses to talk to one provider (Twilio or Meta's Cloud API).

The adapter owns the webhook flow that both share (size cap, signature first, parse, hand to
ingest, acknowledge); a provider only knows its own wire format, signature and REST API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from aiohttp import web

from gateway.channels import SendResult
from gateway.model import Conversation, Message
from plugins.whatsapp.media import Media
from plugins.whatsapp.parsed import ParseResult


class Provider(Protocol):
    name: str
    webhook_methods: str
    """The methods its webhook URL takes, for a 405's Allow."""
    auth_problem: str | None
    """Set when the provider last rejected our credentials; cleared by the next success."""

    def signature_ok(self, request: web.Request, body: bytes) -> bool:
        """Tell whether the request is signed by the provider (constant-time)."""
        ...

    def parse(self, body: bytes, now: datetime, query: Mapping[str, str]) -> ParseResult:
        """Normalize a signature-checked body; MalformedPayload if it is not readable."""
        ...

    def ack(self) -> web.Response:
        """The success answer this provider expects."""
        ...

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        """Answer a GET on the webhook URL (Meta's verification; 405 for Twilio)."""
        ...

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        """Deliver an agent message; raises Transient/PermanentChannelError."""
        ...

    async def fetch_media(self, ref: str) -> Media:
        """Download media by URL (or Meta media id) from the provider's hosts only."""
        ...


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace any secret that a provider echoed back before it reaches a log or an error."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
