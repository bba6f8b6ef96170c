"""Visitor session tokens: signed by the gateway, scoped to one channel and one visitor.

itsdangerous does the signing and expiry; the token carries only the channel name, the visitor
id and the display name, so a token for one visitor can never open another's conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


@dataclass(frozen=True, slots=True)
class VisitorSession:
    channel: str
    visitor_id: str
    display_name: str | None


class InvalidToken(Exception):
    """The token is forged, expired or for another channel."""


class TokenSigner:
    def __init__(self, secret: str, channel: str, ttl: timedelta) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=f"webchat:{channel}")
        self._channel = channel
        self._ttl = ttl

    def issue(self, session: VisitorSession) -> str:
        return self._serializer.dumps(
            {"c": session.channel, "v": session.visitor_id, "n": session.display_name}
        )

    def verify(self, token: str) -> VisitorSession:
        try:
            data = self._serializer.loads(token, max_age=int(self._ttl.total_seconds()))
        except SignatureExpired:
            raise InvalidToken("the session expired") from None
        except BadSignature:
            raise InvalidToken("the token is not valid") from None
        if not isinstance(data, dict) or data.get("c") != self._channel:
            raise InvalidToken("the token is for another channel")
        visitor = data.get("v")
        if not isinstance(visitor, str) or not visitor.startswith("v_"):
            raise InvalidToken("the token is not valid")
        name = data.get("n")
        return VisitorSession(self._channel, visitor, name if isinstance(name, str) else None)
