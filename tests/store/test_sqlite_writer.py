"""Group commit: a failing job never takes its batch neighbours down, and its writes vanish."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.store.sqlite_writer import CAREFUL_BATCHES, GroupCommitWriter


def connector(path: Path) -> Callable[[], sqlite3.Connection]:
    """How the writer opens its connection: a WAL file with one table of names."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS rows (name TEXT PRIMARY KEY)")
        return conn

    return connect


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[GroupCommitWriter]:
    group = GroupCommitWriter(connector(tmp_path / "w.db"))
    await asyncio.to_thread(group.start)
    yield group
    await asyncio.to_thread(group.stop)


def insert(name: str) -> Callable[[sqlite3.Connection], str]:
    def job(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        return name

    return job


def insert_then_fail(name: str) -> Callable[[sqlite3.Connection], str]:
    def job(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        raise ValueError(f"{name} refused")

    return job


async def one_batch(
    writer: GroupCommitWriter, jobs: list[Callable[[sqlite3.Connection], str]]
) -> list[str | BaseException]:
    """Run `jobs` as one batch of their own: a blocker job holds the writer thread (a batch of
    its own) until all of them are queued, so each call is exactly two batches."""
    entered, gate = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> bool:
        entered.set()
        return gate.wait(10)

    held = asyncio.ensure_future(writer.run(blocker))
    assert await asyncio.to_thread(entered.wait, 10)
    calls = [asyncio.ensure_future(writer.run(job)) for job in jobs]
    await asyncio.sleep(0)  # every job is in the writer's queue now
    gate.set()
    assert await held
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def names(writer: GroupCommitWriter) -> list[str]:
    return await writer.run(lambda c: [r[0] for r in c.execute("SELECT name FROM rows ORDER BY 1")])


async def test_a_failing_job_rolls_back_alone_and_its_neighbours_commit(
    writer: GroupCommitWriter,
) -> None:
    outcomes = await one_batch(writer, [insert("a"), insert_then_fail("b"), insert("c")])
    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "b refused"
    assert await names(writer) == ["a", "c"]
    assert writer.fallbacks == 1


async def test_a_batch_without_failures_runs_once(writer: GroupCommitWriter) -> None:
    runs: list[str] = []

    def counted(name: str) -> Callable[[sqlite3.Connection], str]:
        def job(conn: sqlite3.Connection) -> str:
            runs.append(name)
            return insert(name)(conn)

        return job

    assert await one_batch(writer, [counted("a"), counted("b")]) == ["a", "b"]
    assert runs == ["a", "b"] and writer.fallbacks == 0


async def test_jobs_of_a_batch_that_had_to_be_rerun_commit_once(writer: GroupCommitWriter) -> None:
    """The contract for jobs: they may run twice before their batch commits, so they must be
    functions of the connection alone; what commits is the second run, exactly once."""
    runs: list[str] = []

    def counted(conn: sqlite3.Connection) -> str:
        runs.append("a")
        return insert("a")(conn)

    outcomes = await one_batch(writer, [counted, insert_then_fail("b")])
    assert outcomes[0] == "a" and isinstance(outcomes[1], ValueError)
    assert runs == ["a", "a"]
    assert await names(writer) == ["a"]


async def test_after_a_failure_batches_isolate_jobs_until_failures_stop(
    writer: GroupCommitWriter,
) -> None:
    await one_batch(writer, [insert("a"), insert_then_fail("b")])
    assert writer.fallbacks == 1
    for n in range(3 * CAREFUL_BATCHES):  # failures keep coming: no batch runs twice
        outcomes = await one_batch(writer, [insert(f"x{n}"), insert_then_fail(f"y{n}")])
        assert outcomes[0] == f"x{n}" and isinstance(outcomes[1], ValueError)
    assert writer.fallbacks == 1
    for n in range(CAREFUL_BATCHES // 2):  # then enough clean batches (two per call) ...
        assert await one_batch(writer, [insert(f"z{n}")]) == [f"z{n}"]
    await one_batch(writer, [insert("w"), insert_then_fail("v")])
    assert writer.fallbacks == 2  # ... and optimism is back
    assert "w" in await names(writer) and "v" not in await names(writer)


async def test_a_lone_failing_job_gets_its_error_without_a_rerun(
    writer: GroupCommitWriter,
) -> None:
    with pytest.raises(ValueError, match="b refused"):
        await writer.run(insert_then_fail("b"))
    assert writer.fallbacks == 0
    assert await names(writer) == []


# lingering under load ---------------------------------------------------------------------------


@pytest.fixture
async def patient_writer(tmp_path: Path) -> AsyncIterator[GroupCommitWriter]:
    """A writer whose linger is far longer than any test: a batch that lingers when it should
    not makes the test time out instead of passing by luck."""
    group = GroupCommitWriter(connector(tmp_path / "p.db"), linger=60.0)
    await asyncio.to_thread(group.start)
    yield group
    await asyncio.to_thread(group.stop)


async def test_a_lone_job_after_a_lone_job_does_not_linger(
    patient_writer: GroupCommitWriter,
) -> None:
    async with asyncio.timeout(10):
        for name in ("a", "b", "c"):
            assert await patient_writer.run(insert(name)) == name
    assert patient_writer.batches == 3


async def test_under_load_a_batch_waits_for_as_many_jobs_as_the_previous_one_held(
    patient_writer: GroupCommitWriter,
) -> None:
    assert await one_batch(patient_writer, [insert("a"), insert("b"), insert("c")]) == [
        "a",
        "b",
        "c",
    ]
    before = patient_writer.batches
    # Three jobs handed in one at a time, each after the writer could have run the ones before.
    first = asyncio.ensure_future(patient_writer.run(insert("d")))
    await asyncio.sleep(0.05)  # not a wait for state: room for a (wrong) early commit of "d"
    assert not first.done()
    rest = [asyncio.ensure_future(patient_writer.run(insert(n))) for n in ("e", "f")]
    async with asyncio.timeout(10):
        assert await asyncio.gather(first, *rest) == ["d", "e", "f"]
    assert patient_writer.batches == before + 1


async def test_a_lingering_batch_commits_what_came_when_the_linger_ends(tmp_path: Path) -> None:
    writer = GroupCommitWriter(connector(tmp_path / "l.db"), linger=0.05)
    await asyncio.to_thread(writer.start)
    try:
        await one_batch(writer, [insert("a"), insert("b")])
        async with asyncio.timeout(10):  # fewer jobs than the last batch: the linger ends it
            assert await writer.run(insert("c")) == "c"
        assert await names(writer) == ["a", "b", "c"]
    finally:
        await asyncio.to_thread(writer.stop)


async def test_stopping_commits_a_lingering_batch(patient_writer: GroupCommitWriter) -> None:
    await one_batch(patient_writer, [insert("a"), insert("b")])
    waiting = asyncio.ensure_future(patient_writer.run(insert("c")))
    await asyncio.sleep(0)  # "c" is queued; the writer lingers for a second job
    async with asyncio.timeout(10):
        await asyncio.to_thread(patient_writer.stop)
        assert await waiting == "c"


LOCK_WAIT = 1.0


async def test_another_processes_lock_is_waited_for_once_per_job_not_per_batch(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock. A batch that cannot begin is refused at once
    (not run again job by job, waiting for the lock a second time), and a job queued behind
    it waits only what is left of its own `lock_wait`: every job gets its answer about
    `lock_wait` after it was queued, never two or three times that."""

    def connect() -> sqlite3.Connection:
        conn = connector(tmp_path / "w.db")()
        conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
        return conn

    group = GroupCommitWriter(connect, lock_wait=LOCK_WAIT)
    await asyncio.to_thread(group.start)
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()

    async def timed(name: str) -> tuple[BaseException | str, float]:
        queued = loop.time()
        try:
            outcome: BaseException | str = await group.run(insert(name))
        except sqlite3.OperationalError as exc:
            outcome = exc
        return outcome, loop.time() - queued

    try:
        first = asyncio.create_task(timed("a"))
        second = asyncio.create_task(timed("b"))
        await asyncio.sleep(0)  # both queued: a batch of two
        # Halfway through that batch's wait (a point in time, not a state): a third job,
        # which runs as a batch of its own once the first one gave up.
        await asyncio.sleep(LOCK_WAIT / 2)
        late = asyncio.create_task(timed("c"))
        results = [await first, await second, await late]
    finally:
        other.execute("ROLLBACK")
        other.close()
    for outcome, took in results:
        assert isinstance(outcome, sqlite3.OperationalError) and "locked" in str(outcome)
        assert outcome.sqlite_errorcode == sqlite3.SQLITE_BUSY
        assert LOCK_WAIT * 0.8 <= took < LOCK_WAIT * 1.6, took
    assert group.fallbacks == 0
    assert await group.run(insert("d")) == "d"  # the lock is gone: writes go through
    await asyncio.to_thread(group.stop)
