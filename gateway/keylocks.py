"""Per-key FIFO locks for one process: work on one key runs one at a time, in arrival order."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """Serializes work per key within this process, FIFO (the ingests of one contact, the
    replies to one conversation), so they do not race each other's compare-and-set.

    A plain dict of waiter queues rather than an asyncio.Lock per key: the common case (no
    one else busy with the key) then costs one dict insert and one delete, and nothing is left
    behind for keys no longer in use.
    """

    def __init__(self) -> None:
        self._waiters: dict[K, collections.deque[asyncio.Future[None]]] = {}

    def busy(self, key: K) -> bool:
        """Whether someone holds `key` now (an `acquire` would wait)."""
        return key in self._waiters

    async def acquire(self, key: K) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = collections.deque()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # it was handed to us as we were cancelled: pass it on
            elif future in waiters:  # `release` may have dropped it already, as cancelled
                waiters.remove(future)
            raise

    def release(self, key: K) -> None:
        waiters = self._waiters[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        del self._waiters[key]

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)
