"""How long a delivery waits before its next try: the backoff, or the provider's Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from tenacity import RetryCallState

from gateway.errors import TransientChannelError
from gateway.outbound import _honouring_retry_after
from plugins.whatsapp.send_errors import retry_after


def state_after(error: Exception) -> RetryCallState:
    state = RetryCallState(None, None, (), {})
    state.set_exception((type(error), error, None))
    return state


@pytest.mark.parametrize(
    ("hint", "expected"),
    [(None, 0.5), (0.1, 0.5), (2.0, 2.0), (90.0, 30.0)],
)
def test_a_retry_after_longer_than_the_backoff_is_waited_up_to_the_maximum(
    hint: float | None, expected: float
) -> None:
    wait = _honouring_retry_after(lambda _state: 0.5, maximum=30.0)
    error = TransientChannelError("429", provider_code="20429", retry_after=hint)
    assert wait(state_after(error)) == expected


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7.0
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert 55 <= (retry_after(format_datetime(later, usegmt=True)) or 0) <= 60
    assert retry_after(None) is None and retry_after("") is None and retry_after("soon") is None
    assert retry_after("-3") is None
