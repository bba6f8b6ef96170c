"""Visitor session tokens: signed by the gateway, scoped to one channel and one visitor.

itsdangerous does the signing and expiry; the token carries only the channel name, the visitor
id and the display name, so a token for one visitor can never open another's conversation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer


@dataclass(frozen=True, slots=True)
class VisitorSession:
    channel: str
    visitor_id: str
    display_name: str | None


class InvalidToken(Exception):
    """The token is forged, expired or for another channel."""


class TokenSigner:
    """Issues and checks one channel's visitor tokens.

    A token is valid for `ttl` from when it was issued. A token issued "in the future" is
    valid too: itsdangerous refuses one as expired, and so a visitor was refused (and the
    widget started a new chat, orphaning the old one) whenever the node checking a token had a
    clock a second behind the node that issued it, or the host's clock was stepped back. The
    signature says the token is ours; its timestamp is only our own clock's word, so its
    lifetime is counted from the earlier of that and now (never longer than `ttl` ahead)."""

    def __init__(
        self, secret: str, channel: str, ttl: timedelta, now: Callable[[], float] = time.time
    ) -> None:
        clock = now

        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        self._serializer = URLSafeTimedSerializer(secret, salt=f"webchat:{channel}", signer=_Signer)
        self._channel = channel
        self._ttl = ttl
        self._now = now

    def issue(self, session: VisitorSession) -> str:
        return self._serializer.dumps(
            {"c": session.channel, "v": session.visitor_id, "n": session.display_name}
        )

    def verify(self, token: str) -> VisitorSession:
        try:
            data, issued = self._serializer.loads(token, return_timestamp=True)
        except BadSignature:
            raise InvalidToken("the token is not valid") from None
        age = self._now() - issued.timestamp()
        ttl = self._ttl.total_seconds()
        if age > ttl or age < -ttl:
            raise InvalidToken("the session expired")
        if not isinstance(data, dict) or data.get("c") != self._channel:
            raise InvalidToken("the token is for another channel")
        visitor = data.get("v")
        if not isinstance(visitor, str) or not visitor.startswith("v_"):
            raise InvalidToken("the token is not valid")
        name = data.get("n")
        return VisitorSession(self._channel, visitor, name if isinstance(name, str) else None)
