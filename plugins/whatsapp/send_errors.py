"""Turn a provider's refusal into the gateway's retry decision.

The core retries `TransientChannelError` with backoff and marks the message failed on
`PermanentChannelError`; this module only classifies. HTTP 429/5xx are transient, as are the
provider codes that mean "slow down" even when they come with a 400. Everything else 4xx is
permanent, with `closes_window` set for the codes that mean the 24 h window is over (Meta
131047, Twilio 63016) so the lifecycle marks the conversation inactive.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from gateway.errors import ChannelError, PermanentChannelError, TransientChannelError

WINDOW_CLOSED = {"twilio": "63016", "cloud_api": "131047"}

# Throughput/rate limits and temporary outages that Meta reports with HTTP 400
# (PROTOCOLS.md 2.6; Graph codes 4 and 80007 are app/WABA rate limits).
_META_TRANSIENT = frozenset({"4", "80007", "130429", "131016", "131056", "133004"})
# Twilio: 20429 too many requests, 63018 WhatsApp rate limit.
_TWILIO_TRANSIENT = frozenset({"20429", "63018"})
_TRANSIENT = {"twilio": _TWILIO_TRANSIENT, "cloud_api": _META_TRANSIENT}

# Codes that mean our credentials are wrong: the channel is unhealthy until a send succeeds.
AUTH_FAILURE = {"twilio": frozenset({"20003"}), "cloud_api": frozenset({"190"})}


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header's wait in seconds (delta-seconds or an HTTP date); None if absent
    or unreadable (RFC 9110 10.2.3)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify(
    provider: str,
    http_status: int,
    code: str | None,
    reason: str,
    wait: float | None = None,
) -> ChannelError:
    """Return the error to raise for a provider answer with `http_status` and error `code`;
    `wait` is its `Retry-After`, kept on a transient error for the retry to honour."""
    label = f"{provider} answered {http_status}" + (f" (code {code})" if code else "")
    message = f"{label}: {reason}" if reason else label
    if (
        http_status == 429
        or http_status >= 500
        or (code is not None and code in _TRANSIENT[provider])
    ):
        return TransientChannelError(message, provider_code=code, retry_after=wait)
    return PermanentChannelError(
        message,
        provider_code=code,
        closes_window=code is not None and code == WINDOW_CLOSED[provider],
    )


def is_auth_failure(provider: str, http_status: int, code: str | None) -> bool:
    """Tell whether the provider rejected our credentials (shown by `health()`)."""
    return http_status == 401 or (code is not None and code in AUTH_FAILURE[provider])
