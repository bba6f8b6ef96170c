"""Which Cloud API channel of a gateway owns which business phone number.

A Meta app has one webhook URL for all its numbers (PROTOCOLS.md 2.7), so when two channels
are two numbers of one app, Meta posts the traffic of both to whichever channel's URL the app
was given, sometimes in one batch. Items addressed to another number of this gateway must
reach that number's channel: acknowledging them and dropping them loses messages Meta never
sends again. Only a channel of the same app (the same app secret, which the request's
signature was checked with) may take them over; anything else stays skipped and logged.

Numbers are registered per gateway (keyed by the store every channel of one gateway
shares), weakly, so several gateways in one process (tests) never see each other's.
"""

from __future__ import annotations

import hmac
from typing import Protocol
from weakref import WeakKeyDictionary, WeakValueDictionary


class CloudNumber(Protocol):
    """What the registry needs of a Cloud API channel."""

    @property
    def name(self) -> str: ...

    def app_secret(self) -> str: ...


_BY_GATEWAY: WeakKeyDictionary[object, WeakValueDictionary[str, CloudNumber]] = WeakKeyDictionary()


def register(gateway: object, phone_number_id: str, channel: CloudNumber) -> None:
    _BY_GATEWAY.setdefault(gateway, WeakValueDictionary())[phone_number_id] = channel


def unregister(gateway: object, phone_number_id: str, channel: CloudNumber) -> None:
    numbers = _BY_GATEWAY.get(gateway)
    if numbers is not None and numbers.get(phone_number_id) is channel:
        del numbers[phone_number_id]


def siblings(gateway: object, of: CloudNumber) -> dict[str, CloudNumber]:
    """The other numbers of this gateway that belong to the same Meta app as `of`."""
    numbers = _BY_GATEWAY.get(gateway)
    if numbers is None:
        return {}
    secret = of.app_secret().encode()
    return {
        number: channel
        for number, channel in list(numbers.items())
        if channel is not of and hmac.compare_digest(channel.app_secret().encode(), secret)
    }
