"""The node's watch (gateway.watch): the edges of a store outage and a shortage of file
descriptors are logged once each; the soft descriptor limit is lifted to the hard one."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.errors import StoreUnavailable
from gateway.store.sqlite import SqliteStore
from gateway.watch import FD_LIMIT_CAP, NodeWatch, open_fds, raise_fd_limit


def events(logs: list[dict[str, object]]) -> list[object]:
    return [line["event"] for line in logs]


async def test_a_store_outage_is_logged_when_it_starts_and_when_it_ends(tmp_path: Path) -> None:
    now, free = [1000.0], [10**9]
    store = SqliteStore(
        tmp_path / "gateway.db", monotonic=lambda: now[0], free_bytes=lambda path: free[0]
    )
    await store.open()
    watch = NodeWatch(store, monotonic=lambda: now[0], count_fds=lambda: 10, limit_fds=lambda: 100)
    try:
        with capture_logs() as logs:
            await watch.check()
            assert events(logs) == []  # up, as at the start: nothing to say
            # The disk fills: a write is refused, and every look meanwhile is still down.
            pages = await store._write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
            await store._write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
            with pytest.raises(StoreUnavailable):
                for i in range(500):
                    await store.kv_set(f"filler{i}", "x" * 4000)
            await watch.check()
            now[0] += 2
            await watch.check()
            assert events(logs) == ["store.unavailable"]
            # Room again: the ping's probe write goes through, and the end is logged once.
            await store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
            now[0] += 10
            await watch.check()
            await watch.check()
        assert events(logs) == ["store.unavailable", "store.available"]
        assert logs[1]["unavailable_for_s"] == 12.0
    finally:
        await store.close()


async def test_running_short_of_file_descriptors_is_warned_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    open_now = [100]
    watch = NodeWatch(store, count_fds=lambda: open_now[0], limit_fds=lambda: 1000)
    try:
        with capture_logs() as logs:
            for count in (100, 850, 900, 990, 750, 500, 820):
                open_now[0] = count
                await watch.check()
        warned = [line for line in logs if line["event"] == "server.file_descriptors_low"]
        # Once at 850 (not again at 900, 990, or at 750, above the re-arm share), again at 820.
        assert [(line["open"], line["limit"]) for line in warned] == [(850, 1000), (820, 1000)]
        assert "ulimit" in str(warned[0]["hint"])
    finally:
        await store.close()


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """The descriptor limits as they were, put back after the test."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_descriptor_limit_is_lifted_to_the_hard_one(nofile: tuple[int, int]) -> None:
    _, hard = nofile  # left as it is: lowering it could not be undone without root
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    wanted = FD_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    assert raise_fd_limit() == wanted > 256
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)


def test_at_the_limit_every_descriptor_counts_as_in_use(nofile: tuple[int, int]) -> None:
    """Counting them opens one more: at the limit the count failed, and the warning it was
    for never came, exactly when it mattered."""
    held = []
    limit = open_fds_now() + 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, nofile[1]))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        assert open_fds() == limit
    finally:
        for fd in held:
            os.close(fd)


def open_fds_now() -> int:
    count = open_fds()
    assert count is not None
    return count
