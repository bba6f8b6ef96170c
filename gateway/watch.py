"""The node watching itself: it logs when its store stops or starts taking writes, and when it
runs short of file descriptors.

During a store outage every refused request logs its own `http.refused` line, and nothing
said when the outage began or ended: an operator had to piece that together from the refusals.
The watch pings the store every few seconds and logs the two edges (`store.unavailable`,
`store.available` with how long it lasted).

A process out of file descriptors cannot accept connections, and uvloop then closes them
without a word: webhooks and health checks fail with resets while the log stays empty. The
watch warns when most of the limit is in use, and `raise_fd_limit` lifts the soft limit to the
hard one at start (many systems default to a soft 1,024, well below what the hard limit allows).
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from collections.abc import Callable

import structlog

from gateway.store.base import Store

log = structlog.get_logger("gateway.watch")

WATCH_INTERVAL = 2.0
"""Seconds between two looks (a store ping and a count of open file descriptors)."""
PING_TIMEOUT = 0.8
"""How long a ping may take before the store counts as unavailable (as for /readyz)."""
FD_WARN_SHARE = 0.8
"""The share of the descriptor limit in use from which the watch warns."""
FD_REARM_SHARE = 0.7
"""Below this share again, the next crossing of FD_WARN_SHARE warns again."""
FD_LIMIT_CAP = 1 << 20
"""The most `raise_fd_limit` asks for when the hard limit is unlimited."""


async def store_ready(store: Store, timeout: float) -> bool:
    """Whether the store answers and takes writes within `timeout` seconds."""
    return await store_problem(store, timeout) is None


async def store_problem(store: Store, timeout: float) -> str | None:
    """Why the store is not ready (see `Store.problem`, and `timeout`: no answer within
    `timeout` seconds), None when it is."""
    try:
        async with asyncio.timeout(timeout):
            return await store.problem()
    except TimeoutError:
        return "timeout"


def open_fds() -> int | None:
    """How many file descriptors this process has open (None where /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno == errno.EMFILE:  # listing them takes one more: every one is in use
            return fd_limit()
        return None


def fd_limit() -> int | None:
    """The soft limit on open file descriptors (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int | None:
    """Lift the soft descriptor limit to the hard one; return the soft limit now in force.

    Every socket (a webhook, an agent stream, a visitor's chat) is a descriptor, and a soft
    limit of 1,024 is reached by a few hundred chats. Only the soft limit moves: the hard one
    is the administrator's (`ulimit -Hn`, systemd's `LimitNOFILE=`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            log.warning("server.fd_limit_not_raised", limit=soft, wanted=wanted, error=str(exc))
    return fd_limit()


class NodeWatch:
    """Looks at the store and the descriptors every `interval`; logs only what changed."""

    def __init__(
        self,
        store: Store,
        interval: float = WATCH_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        count_fds: Callable[[], int | None] = open_fds,
        limit_fds: Callable[[], int | None] = fd_limit,
    ) -> None:
        self.store = store
        self.interval = interval
        self._monotonic = monotonic
        self._count_fds = count_fds
        self._limit_fds = limit_fds
        self._down_since: float | None = None
        self._fds_warned = False

    async def check(self) -> None:
        """One look at both."""
        await self._check_store()
        self._check_fds()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not end the watch, nor the node
                log.exception("watch.failed")
            await asyncio.sleep(self.interval)

    async def _check_store(self) -> None:
        up = await store_ready(self.store, PING_TIMEOUT)
        if not up and self._down_since is None:
            self._down_since = self._monotonic()
            log.warning("store.unavailable", hint="requests that need it answer 503")
        elif up and self._down_since is not None:
            lasted = self._monotonic() - self._down_since
            self._down_since = None
            log.info("store.available", unavailable_for_s=round(lasted, 1))

    def _check_fds(self) -> None:
        count, limit = self._count_fds(), self._limit_fds()
        if count is None or not limit:
            return
        share = count / limit
        if share >= FD_WARN_SHARE and not self._fds_warned:
            self._fds_warned = True
            log.warning(
                "server.file_descriptors_low",
                open=count,
                limit=limit,
                hint="new connections fail without an answer at the limit: raise it"
                " (ulimit -n, systemd LimitNOFILE=) or lower max_sockets_per_address",
            )
        elif share < FD_REARM_SHARE:
            self._fds_warned = False
