"""Reconnect forever with capped exponential backoff, on tenacity.

tenacity counts attempts from the first failure; a mailbox connection that was healthy for a
day and then drops should start again from the short delay, so the delay count lives in
`Backoff`, which the session resets once it has completed a sync.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    """A tenacity `wait`: initial, 2x, 4x, ... capped at `cap` seconds, plus up to 10% jitter."""

    def __init__(
        self,
        initial: float = 1.0,
        cap: float = 300.0,
        *,
        jitter: float = 0.1,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.failures = 0
        self._rand = rand

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.next_delay()

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count one more failure."""
        base = min(self.cap, self.initial * (2 ** min(self.failures, 32)))
        self.failures += 1
        return float(min(self.cap, base * (1 + self.jitter * self._rand())))

    def reset(self) -> None:
        """Forget past failures (call when a connection has proven healthy)."""
        self.failures = 0


def reconnecting(
    backoff: Backoff,
    *,
    sleep: Sleep,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None],
) -> AsyncRetrying:
    """Return a tenacity loop that retries any failure forever, waiting per `backoff`."""
    return AsyncRetrying(
        wait=backoff,
        retry=retry_if_exception_type(Exception),
        stop=stop_never,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
