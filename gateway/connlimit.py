"""How many long-lived connections (WebSockets) one caller holds open on this node.

A socket costs a file descriptor and a task for as long as it is open, and opening one costs the
caller nothing: without a cap, one visitor token (or one address) can open sockets until the
process runs out of descriptors, and then nobody is served. Counts are per node (a socket lives
on one node); a cap is refused before the upgrade, as an HTTP 429 the client can read.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable


class ConnectionCounter:
    """Open connections per key, refused past `cap` (None: no cap)."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self._open: Counter[Hashable] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    def try_open(self, key: Hashable) -> bool:
        """Count one more connection for `key`; False (nothing counted) when at the cap."""
        if self.cap is not None and self._open[key] >= self.cap:
            return False
        self._open[key] += 1
        return True

    def close(self, key: Hashable) -> None:
        """One connection `try_open` counted for `key` has ended."""
        left = self._open[key] - 1
        if left > 0:
            self._open[key] = left
        else:
            del self._open[key]
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, key: Hashable, at_most: int) -> None:
        """Return once `key` holds at most `at_most` connections (tests, hand-offs: a client
        sees its socket closed a moment before the server's handler has finished with it)."""
        while self.open_for(key) > at_most:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def open_for(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        """How many keys hold a connection (tests: nothing leaks)."""
        return len(self._open)
