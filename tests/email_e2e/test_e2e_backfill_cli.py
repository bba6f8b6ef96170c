"""`gateway email backfill` run for real: `python -m gateway.cli` as a subprocess, reading the
test Dovecot and writing the store a gateway would serve (a SQLite file, or a real Redis: every
test here runs on both); the result is read back with the store itself."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway.model import State
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore
from tests.conftest import STORE_KINDS, store_url
from tests.email.servers import PASSWORD, Dovecot, SmtpServer
from tests.email_e2e.conftest import CHANNEL, customer_mail, mail_config

ROOT = Path(__file__).resolve().parents[2]
OCTOBER = "01-Oct-2026 10:00:00 +0000"
NOVEMBER = "20-Nov-2026 10:00:00 +0000"


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the command writes to, on each store kind."""
    return store_url(request, request.param, tmp_path / "gw.db")


@pytest.fixture
def config_file(url: str, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer) -> Path:
    text, _env = mail_config(
        url,
        dovecot,
        smtp_server,
        more_channels='  - {name: site, type: webchat, allowed_origins: ["https://shop.test"]}',
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def cli(
    config: Path, *args: str, password: str = PASSWORD, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `gateway email backfill --config CONFIG ARGS...` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "email", "backfill", "--config", str(config), *args],
        cwd=ROOT,
        env={**os.environ, "IMAP_PASSWORD": password, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def acli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cli` from async tests, off the event loop."""
    return await asyncio.to_thread(cli, config, *args)


def mail(n: int, who: str) -> bytes:
    return customer_mail(
        message_id=f"<bf{n}@customer.example>",
        sender=f"{who.title()} <{who}@customer.example>",
        subject=f"Backfill {n}",
        text=f"Old mail {n}.",
    )


class Stored:
    """What the gateway's store holds, read with the store itself (opened anew for each read,
    the way a gateway starting on that `store.url` would)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def conversations(self) -> dict[str, list[str]]:
        """Map each waiting conversation's contact to the provider ids of its messages."""
        store: Store = (
            SqliteStore.from_url(self.url)
            if self.url.startswith("sqlite:")
            else RedisStore.from_url(self.url)
        )
        await store.open()
        try:
            found: dict[str, list[str]] = {}
            for conversation in await store.list_conversations(State.WAITING, limit=10_000):
                messages = await store.list_recent_messages(conversation.id, limit=10_000)
                found[conversation.contact.address] = [
                    m.provider_message_id or "" for m in messages
                ]
            return found
        finally:
            await store.close()

    async def message_count(self) -> int:
        return sum(len(ids) for ids in (await self.conversations()).values())


async def test_backfill_imports_since_then_everything_idempotently(
    url: str, config_file: Path, dovecot: Dovecot
) -> None:
    await dovecot.append(mail(0, "ana"), date=OCTOBER)
    await dovecot.append(mail(1, "bruno"), date=OCTOBER)
    await dovecot.append(mail(2, "ana"), date=NOVEMBER)
    await dovecot.append(mail(3, "carla"), date=NOVEMBER)
    stored = Stored(url)

    recent = await acli(config_file, "--channel", CHANNEL, "--since", "2026-11-01")
    assert recent.returncode == 0, recent.stderr
    assert recent.stdout.strip() == f"{CHANNEL}: imported 2 new message(s) since 2026-11-01"
    assert "2/2" in recent.stderr  # the progress bar
    assert await stored.conversations() == {
        "ana@customer.example": ["<bf2@customer.example>"],
        "carla@customer.example": ["<bf3@customer.example>"],
    }

    again = await acli(config_file, "--channel", CHANNEL, "--since", "2026-11-01")
    assert again.returncode == 0, again.stderr
    assert "imported 0 new message(s)" in again.stdout

    everything = await acli(config_file, "--channel", CHANNEL)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.strip() == f"{CHANNEL}: imported 2 new message(s)"
    assert "4/4" in everything.stderr
    assert await stored.conversations() == {
        "ana@customer.example": ["<bf2@customer.example>", "<bf0@customer.example>"],
        "carla@customer.example": ["<bf3@customer.example>"],
        "bruno@customer.example": ["<bf1@customer.example>"],
    }
    for run in (recent, again, everything):
        assert PASSWORD not in run.stdout + run.stderr

    quiet = await acli(config_file, "--channel", CHANNEL, "--no-progress")
    assert quiet.returncode == 0 and "imported 0" in quiet.stdout
    assert "/4" not in quiet.stderr


def progress(pipe: BinaryIO) -> Iterator[int]:
    """Yield the counts tqdm reports on stderr (`12/300`) as they are written."""
    buffer = b""
    while chunk := pipe.read(4096):
        buffer += chunk
        *done, buffer = re.split(rb"[\r\n]", buffer)
        for line in done:
            match = re.search(rb"(\d+)/\d+", line)
            if match:
                yield int(match.group(1))


def kill_backfill_at(config: Path, count: int) -> int:
    """Run the backfill and SIGKILL it once its progress bar reports `count`; return its exit
    status (-SIGKILL when the kill landed, 0 when the run had already finished).

    Its stderr is a pipe of one page: a backfill that runs ahead of this reader (say, while the
    test process is not scheduled on a busy machine) blocks on its progress bar a few dozen
    mails later instead of importing the whole mailbox before the kill."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    command = ["gateway.cli", "email", "backfill", "--config", str(config), "--channel", CHANNEL]
    with subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env={**os.environ, "IMAP_PASSWORD": PASSWORD, "TQDM_MININTERVAL": "0"},
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    ) as proc:
        os.close(write_end)
        try:
            with open(read_end, "rb", buffering=0) as pipe:
                for seen in progress(pipe):
                    if seen >= count:
                        proc.kill()
                        break
        finally:
            proc.kill()  # nothing to do if it was killed or exited already
            proc.wait(60)
    return proc.returncode


async def test_backfill_killed_midway_resumes_where_it_stopped(
    url: str, config_file: Path, dovecot: Dovecot
) -> None:
    """SIGKILL mid-run (no clean-up at all), then run again: every mail stored exactly once."""
    total = 300
    people = ["ana", "bruno", "carla"]
    raws = [mail(n, people[n % 3]) for n in range(total)]
    await asyncio.to_thread(dovecot.append_many_sync, raws, date=OCTOBER)
    stored = Stored(url)

    status = await asyncio.to_thread(kill_backfill_at, config_file, 10)
    assert status == -signal.SIGKILL

    before = await stored.message_count()
    assert 10 <= before < total  # it really was interrupted midway

    resumed = await acli(config_file, "--channel", CHANNEL)
    assert resumed.returncode == 0, resumed.stderr
    # a mail stored just before the kill, its cursor not yet saved, is fetched again and
    # dropped as a duplicate: only the rest counts as imported
    assert f"imported {total - before} new message(s)" in resumed.stdout
    conversations = await stored.conversations()
    for index, who in enumerate(people):
        assert conversations[f"{who}@customer.example"] == [
            f"<bf{n}@customer.example>" for n in range(index, total, 3)
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "nope"], "no channel named 'nope' (email channels: support-mail)"),
        (["--channel", "site"], "channel 'site' is of type 'webchat', not email"),
        (
            ["--channel", CHANNEL, "--since", "last week"],
            "--since 'last week' is not a date (expected YYYY-MM-DD)",
        ),
    ],
)
def test_command_line_errors_are_one_line_and_exit_2(
    config_file: Path, args: list[str], message: str
) -> None:
    """Exit 2 as `gateway route` (and argparse) for a command line the config does not match
    (README audit: backfill said 1, route 2)."""
    run = cli(config_file, *args)
    assert (run.returncode, run.stdout, run.stderr) == (
        2,
        "",
        f"gateway email backfill: {message}\n",
    )


def test_refused_login_is_one_line_and_exit_1(config_file: Path, dovecot: Dovecot) -> None:
    wrong = cli(config_file, "--channel", CHANNEL, password="not-the-password")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(
        "gateway email backfill: cannot read the mailbox of 'support-mail': login refused"
    )
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "not-the-password" not in wrong.stderr + wrong.stdout


def test_missing_mail_server_is_a_clear_error(config_file: Path, dovecot: Dovecot) -> None:
    dovecot.stop()
    run = cli(config_file, "--channel", CHANNEL)
    assert run.returncode == 1
    assert "cannot read the mailbox of 'support-mail'" in run.stderr
    assert "Traceback" not in run.stderr
