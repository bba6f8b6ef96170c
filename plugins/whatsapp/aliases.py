"""One customer, one address: a WhatsApp user's BSUID mapped to the phone number it came with.

Meta's business-scoped user ids (BSUIDs, `US.1234`, 2026) arrive beside the phone number
(`contacts[].user_id` / `from_user_id`, Twilio's `ExternalUserId`) until the user adopts a
username and hides the number; from then on their messages carry the BSUID alone. Contacts are
keyed on the phone whenever one exists (DESIGN.md section 6), so without a memory of the pair
the same person would open a second conversation the day the number disappears. The pairs live
in the store's key-value space: shared by every node, kept across restarts.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from gateway.channels import KeyValue
from gateway.errors import StoreUnavailable
from gateway.model import Contact, InboundMessage, evolve

log = structlog.get_logger("gateway.whatsapp.aliases")

REMEMBERED = 10_000
"""Pairs each node keeps in memory, so a known pair costs no store write or read."""


class ContactAliases:
    """Remembers BSUID -> phone pairs of one channel and applies them to BSUID-only messages."""

    def __init__(self, kv: KeyValue, channel: str) -> None:
        self._kv = kv
        self._prefix = f"whatsapp:alias:{channel}:"
        self._known: OrderedDict[str, str] = OrderedDict()

    async def resolve(self, message: InboundMessage) -> InboundMessage:
        """The message keyed on the phone its sender's BSUID was last seen with, if any.

        A message that carries both records the pair (once per node while it holds); one that
        carries only the BSUID gets the recorded phone as its address, the BSUID staying in
        `extra["user_id"]`. A store failure here never loses the message: it keeps the address
        it came with. An unavailable store (down or hung) raises `StoreUnavailable` instead:
        ingest would wait for the same store, and a BSUID-only message must not be keyed on
        the BSUID just because the pair could not be read; the webhook is answered 503 and
        re-delivered.
        """
        user_id = message.extra.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            return message
        address = message.contact.address
        try:
            if address != user_id:  # the phone is there: remember it for the day it is not
                if self._known.get(user_id) != address:
                    await self._kv.kv_set(self._prefix + user_id, address)
                    self._remember(user_id, address)
                return message
            phone = self._known.get(user_id) or await self._kv.kv_get(self._prefix + user_id)
        except StoreUnavailable:  # the webhook is refused and re-delivered: nothing is lost
            raise
        except Exception as exc:  # the store hiccuped: ingest decides what that means
            log.warning("whatsapp.alias_unavailable", channel=message.channel, error=str(exc))
            return message
        if phone is None:
            return message
        self._remember(user_id, phone)
        contact = Contact(address=phone, display_name=message.contact.display_name)
        return evolve(message, contact=contact)

    def _remember(self, user_id: str, phone: str) -> None:
        self._known[user_id] = phone
        self._known.move_to_end(user_id)
        while len(self._known) > REMEMBERED:
            self._known.popitem(last=False)
