"""What the payload parsers return: normalized items plus what could not be used.

Parsers never raise for one bad item of a batch (it becomes an `ItemProblem` so the adapter
can log it and still deliver the rest); they raise `MalformedPayload` only when the envelope
itself cannot be read, which the adapter answers with 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.model import DeliveryStatus, InboundMessage


class MalformedPayload(ValueError):
    """The (correctly signed) body is not a payload this provider sends."""


@dataclass(frozen=True, slots=True)
class ItemProblem:
    """One item that was skipped, with where it was and why (for the log, never the store)."""

    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProviderError:
    """An error the provider reported in the webhook itself (Meta `value.errors[]`)."""

    code: str
    title: str
    details: str | None = None
    raw: Any = None


@dataclass(slots=True)
class ParseResult:
    """Everything one webhook request carried, in payload order."""

    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[DeliveryStatus] = field(default_factory=list)
    errors: list[ProviderError] = field(default_factory=list)
    problems: list[ItemProblem] = field(default_factory=list)


def e164(value: str) -> str:
    """Return `+digits` for a bare phone number; anything else (a BSUID, a name) unchanged."""
    stripped = value.strip()
    if stripped.isascii() and stripped.isdigit():
        return f"+{stripped}"
    return stripped


def from_unix(value: Any, fallback: datetime) -> datetime:
    """Read a provider timestamp (Unix seconds, string or number); `fallback` if unreadable,
    or zero or negative: 1970 is no provider's time, and read as one it opened the customer's
    conversation with its 24 h window long over (inactive, never queued)."""
    try:
        seconds = int(str(value).strip())
    except (TypeError, ValueError):
        return fallback
    if seconds <= 0:
        return fallback
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback
