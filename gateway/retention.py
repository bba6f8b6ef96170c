"""Event log retention: events older than `store.event_retention` are deleted, a batch at a time.

The log is what integrators page through and what streams replay; kept whole it grows by about
a kilobyte per event, three events per customer message, for ever. Conversations and messages
are the inbox's record and are never deleted here. Every node runs this from its scheduler's
pass, at most once per `EVERY`; deleting what another node already deleted is a no-op.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from gateway.clock import Clock
from gateway.store.base import Store

log = structlog.get_logger("gateway.retention")

EVERY = timedelta(minutes=10)
"""How often a node prunes the log."""
BATCH = 5_000
"""Events deleted per write: a batch holds the writer (SQLite) or Redis for milliseconds."""
MAX_BATCHES = 20
"""Batches per pass at most; a backlog (retention just turned on) goes over several passes."""


class EventRetention:
    def __init__(self, store: Store, clock: Clock, keep: timedelta | None) -> None:
        self.store = store
        self.clock = clock
        self.keep = keep
        self._last: datetime | None = None

    async def run(self) -> int:
        """Prune if retention is on and the last pass is `EVERY` ago; return events deleted."""
        if self.keep is None:
            return 0
        now = self.clock.now()
        if self._last is not None and now - self._last < EVERY:
            return 0
        self._last = now
        deleted = 0
        for _ in range(MAX_BATCHES):
            gone = await self.store.prune_events(now - self.keep, BATCH)
            deleted += gone
            if gone < BATCH:
                break
        if deleted:
            log.info("retention.pruned", events=deleted, before=now - self.keep)
        return deleted
