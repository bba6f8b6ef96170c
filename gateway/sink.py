"""What a channel adapter hands to ingest, checked at the door.

Each adapter gets its own `ChannelInbound` (as `ChannelContext.inbound`): the ingest path with
the plugin contract enforced. A plugin bug that would otherwise lose a message silently (an
empty provider id deduplicates every later message with it away), file it under a channel that
does not exist, or fail deep inside the store with a bare `TypeError` (a naive `sent_at`, a
`raw` that is not JSON) is refused here, naming the channel and the field, before anything is
stored. The provider gets a 500 (`adapter_error`): it retries, and once the plugin is fixed the
message arrives; a 4xx would tell it to drop the message.

A contact's display name is the customer's own words (a WhatsApp profile name, an email
From's phrase): one of 20,000 characters filled the inbox's header past the screen. Here, for
every channel, it loses control characters and the ones that reorder text (a right-to-left
override left open reverses what follows it wherever the name is shown), and is cut to
`MAX_DISPLAY_NAME` characters, between two visible characters; `raw` keeps it as it came.

A message's text and subject lose control characters other than tabs and line breaks: a NUL
typed into a web chat reached agents, integrators and whatever stored the events downstream
(many databases refuse it). Nothing else of the text changes: a right-to-left mark in a
customer's sentence is theirs.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson
import structlog

from gateway.errors import GatewayError
from gateway.ingest import Ingestor
from gateway.model import Contact, DeliveryStatus, InboundMessage, evolve
from gateway.store.base import IngestResult, StatusResult

log = structlog.get_logger("gateway.sink")

MAX_DISPLAY_NAME = 200
"""Characters of a contact's display name that are kept (see the module docstring)."""
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""Control characters and the bidirectional embeddings, overrides and isolates."""
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""Control characters, except tab, line feed and carriage return."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SEPARATORS = re.compile(r"[/\\]")
_JOINS_PREVIOUS = re.compile("[\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")
"""What belongs to the character before it: a joiner, variation selectors, skin tones, tags."""
_REGIONAL_AT_END = re.compile("[\U0001f1e6-\U0001f1ff]+$")


def shown_text(text: str) -> str:
    """A message's text (or subject) as the gateway keeps it (see the module docstring)."""
    return _CONTROL_IN_TEXT.sub("", text) if _CONTROL_IN_TEXT.search(text) else text


def shown_filename(name: str) -> str | None:
    """A file's name as it may be offered for saving: without control characters, with `_`
    for path separators (a name is never a path on the reader's disk); None when nothing is
    left of it (or only `.` or `..`)."""
    cleaned = _SEPARATORS.sub("_", _CONTROL.sub("", name)).strip()
    return None if cleaned in ("", ".", "..") else cleaned


def shown_name(name: str) -> str:
    """A display name as the gateway keeps it (see the module docstring)."""
    if _UNSHOWN.search(name):
        name = _UNSHOWN.sub("", name)
    if len(name) <= MAX_DISPLAY_NAME:
        return name
    end = MAX_DISPLAY_NAME - 1
    # Back to the start of the visible character the cut falls in: an emoji of several
    # (a family, a skin tone), an accent on its letter, half a flag.
    while end > 0 and (unicodedata.combining(name[end]) or _JOINS_PREVIOUS.match(name[end])):
        end -= 1
    while end > 0 and name[end - 1] == "\u200d":  # its joiner joins it to the one before
        end -= 2
    halves = _REGIONAL_AT_END.search(name, 0, end)  # a flag is two regional indicators
    if halves is not None and len(halves.group()) % 2:
        end -= 1
    return name[:end].rstrip() + "…"


class AdapterContractError(GatewayError):
    """A channel plugin handed ingest something the adapter protocol does not allow."""

    code = "adapter_error"


class ChannelInbound:
    """The `Inbound` sink of one channel instance."""

    def __init__(
        self,
        ingestor: Ingestor,
        channel: str,
        channel_type: str,
        siblings: frozenset[str] = frozenset(),
    ) -> None:
        self.ingestor = ingestor
        self.channel = channel
        self.channel_type = channel_type
        self.channels = siblings | {channel}
        """What this adapter may file traffic under: its own instance, or another of its type
        (one Meta app posts every number's webhooks to one URL)."""

    def _refuse(self, what: str) -> AdapterContractError:
        log.error("adapter.contract_broken", channel=self.channel, problem=what)
        return AdapterContractError(f"channel {self.channel!r}: {what}")

    async def message(self, inbound: InboundMessage) -> IngestResult:
        if inbound.channel not in self.channels or inbound.channel_type != self.channel_type:
            raise self._refuse(
                f"a message for channel {inbound.channel!r} ({inbound.channel_type}) came from"
                f" this {self.channel_type} channel"
            )
        if not isinstance(inbound.provider_message_id, str) or not inbound.provider_message_id:
            raise self._refuse("provider_message_id must be a non-empty string (the dedup key)")
        address = getattr(inbound.contact, "address", None)
        if not isinstance(address, str) or not address:
            raise self._refuse("contact.address must be a non-empty string")
        if getattr(inbound.sent_at, "tzinfo", None) is None:
            raise self._refuse("sent_at must be a timezone-aware datetime")
        name = inbound.contact.display_name
        if isinstance(name, str):
            shown = shown_name(name)
            if shown != name:
                inbound = evolve(inbound, contact=Contact(address, shown))
        for field in ("text", "subject"):
            value = getattr(inbound, field)
            if isinstance(value, str) and (shown := shown_text(value)) is not value:
                inbound = evolve(inbound, **{field: shown})
        try:
            return await self.ingestor.message(inbound)
        except orjson.JSONEncodeError as exc:  # raw or extra: found where they are encoded
            raise self._refuse(f"the message is not JSON-serializable: {exc}") from None

    async def status(self, status: DeliveryStatus) -> StatusResult:
        if status.channel not in self.channels:
            raise self._refuse(f"a delivery status for channel {status.channel!r} came from here")
        if not isinstance(status.provider_message_id, str) or not status.provider_message_id:
            raise self._refuse("a delivery status needs a non-empty provider_message_id")
        return await self.ingestor.status(status)

    def __getattr__(self, name: str) -> Any:
        """Anything else an adapter used from the ingestor before this door existed."""
        return getattr(self.ingestor, name)
