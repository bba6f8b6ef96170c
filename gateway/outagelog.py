"""One warning per outage from a background loop, not one per retry.

The loops that use the store (the hub's readers, the scheduler, the presence heartbeat) retry
every second or so while it is down: each logging a warning per try made a Redis restart
about five lines a second, burying what mattered. The node's watch logs the outage's edges
(`store.unavailable`, `store.available`, see `gateway.watch`); each loop now says its first
failure at warning and the next ones at debug, until a try succeeds.
"""

from __future__ import annotations

from typing import Any


class LoopOutage:
    """A loop's run of consecutive store failures, and how loudly to log the next one."""

    def __init__(self, logger: Any, event: str) -> None:
        self._log = logger
        self._event = event
        self.failures = 0

    def failed(self, **fields: Any) -> None:
        self.failures += 1
        if self.failures == 1:
            self._log.warning(self._event, **fields)
        else:
            self._log.debug(self._event, repeated=self.failures, **fields)

    def succeeded(self) -> None:
        self.failures = 0
