"""Email benchmarks (issue 5): IMAP throughput into the store, and delivery-to-inbox latency.

1. Throughput: N messages cycling through the ten real mails of shared/fixtures/email (each
   given its own Message-ID) are APPENDed to a throwaway Dovecot; then the email channel's
   adapter, wired by the gateway's own `Runtime` (real ingest, SQLite file with
   synchronous=FULL, one durable commit per message), imports them all in its first pass:
   UID SEARCH, UID FETCH in batches of 10, parse (in a worker thread), ingest, cursor saved
   after each message. Reported as messages/s and as a ratio to a bare aioimaplib client
   fetching the same messages with the same batch size from the same server in the same run
   (connect, login, select, UID FETCH BODY.PEEK[], nothing else). Rounds alternate the two;
   the median round counts.
2. Latency: with the adapter IDLE-ing, M mails are sent one at a time over SMTP to a small
   MTA (aiosmtpd) that hands each to Dovecot's delivery agent, `dovecot-lda`, before it answers
   250, so mail arrives as delivered mail, not as an IMAP APPEND. Measured from the start of
   the SMTP send to the `message.received` event in the gateway's event log, p50/p99 (and the
   part after delivery finished). Target: p99 < 2 s.

Logging is filtered to errors (as in core_bench.py), so log rendering is not measured.

Run: python bench/email_bench.py [--messages 2000] [--mails 100] [--rounds 3]
Needs Debian's dovecot-imapd (the test fixtures' server harness starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import aioimaplib
import aiosmtplib
import structlog
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import Runtime, RuntimeOptions
from plugins.email.adapter import FETCH_BATCH, EmailAdapter
from tests.email.servers import (
    PASSWORD,
    USER,
    Dovecot,
    LdaHandler,
    free_port,
    make_dovecot_root,
    remove_root,
)

FIXTURES = ROOT.parent / "shared" / "fixtures" / "email"
CHANNEL = "bench-mail"
_MESSAGE_ID = re.compile(rb"^message-id:[^\n]*\n(?:[ \t][^\n]*\n)*", re.IGNORECASE | re.MULTILINE)


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """Give a mail a new top-level Message-ID (embedded messages keep theirs)."""
    raw = raw.replace(b"\r\n", b"\n")
    head, sep, body = raw.partition(b"\n\n")
    head = _MESSAGE_ID.sub(b"", head + b"\n")
    return f"Message-ID: {message_id}\n".encode() + head + sep.lstrip(b"\n") + b"\n" + body


def mixed_messages(count: int) -> list[bytes]:
    fixtures = sorted(FIXTURES.glob("*.eml"))
    run = uuid.uuid4().hex[:8]
    return [
        with_message_id(fixtures[n % len(fixtures)].read_bytes(), f"<b{n}.{run}@bench.example>")
        for n in range(count)
    ]


@contextmanager
def dovecot() -> Iterator[Dovecot]:
    root = make_dovecot_root()
    server = Dovecot(root=root)
    server.write_config()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        remove_root(root)


def config_text(db: Path, server: Dovecot) -> str:
    return f"""
store: {{url: "sqlite:///{db}"}}
channels:
  - name: {CHANNEL}
    type: email
    address: support@gw.example.com
    imap: {{host: 127.0.0.1, port: {server.port}, tls: none, username: "{USER}",
            password: "{PASSWORD}", first_sync: all, timeout: 60s}}
    smtp: {{host: 127.0.0.1, port: 25, tls: none}}
queues: [{{name: support, distribution: manual}}]
routing: [{{queue: support}}]
"""


@dataclass
class Gateway:
    runtime: Runtime

    @property
    def adapter(self) -> EmailAdapter:
        adapter = self.runtime.adapters[CHANNEL]
        assert isinstance(adapter, EmailAdapter)
        return adapter

    async def received(self) -> int:
        events = 0
        after = None
        while batch := await self.runtime.store.read_events(after, limit=5000):
            events += sum(1 for e in batch if e.type == "message.received")
            after = batch[-1].cursor
        return events


async def open_gateway(db: Path, server: Dovecot) -> Gateway:
    """The gateway's own wiring (Runtime), without the HTTP server: what ingest runs in."""
    types = channel_types(get_plugin_manager())
    config = parse_config(config_text(db, server), "bench.yaml", config_models(types), env={})
    runtime = Runtime(config, types, options=RuntimeOptions(run_scheduler=False))
    await runtime.store.open()
    return Gateway(runtime)


async def close_gateway(gateway: Gateway) -> None:
    await gateway.adapter.stop()
    await gateway.runtime.store.close()


async def bare_fetch(server: Dovecot, count: int) -> float:
    """A bare aioimaplib client fetching UIDs 1..count in batches; return the seconds taken."""
    started = time.perf_counter()
    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(USER, PASSWORD)
    await client.select("INBOX")
    fetched = 0
    for start in range(1, count + 1, FETCH_BATCH):
        uids = ",".join(str(u) for u in range(start, min(start + FETCH_BATCH, count + 1)))
        response = await client.uid("fetch", uids, "(UID BODY.PEEK[])")
        assert response.result == "OK", response
        fetched += sum(1 for line in response.lines if isinstance(line, bytearray))
    await client.logout()
    elapsed = time.perf_counter() - started
    assert fetched == count, (fetched, count)
    return elapsed


async def gateway_import(server: Dovecot, db: Path, count: int) -> float:
    """Start the email channel on an empty store; return the seconds its first pass took."""
    gateway = await open_gateway(db, server)
    try:
        started = time.perf_counter()
        await gateway.adapter.start()
        await gateway.adapter.wait_for(lambda: gateway.adapter.passes >= 1)
        elapsed = time.perf_counter() - started
        stored = await gateway.received()
        assert stored == count, (stored, count)
        return elapsed
    finally:
        await close_gateway(gateway)


async def throughput(count: int, rounds: int, workdir: Path) -> tuple[float, float]:
    """Return (bare msgs/s, gateway msgs/s), medians over `rounds` alternating rounds."""
    with dovecot() as server:
        server.append_many_sync(mixed_messages(count))
        await bare_fetch(server, count)  # warm Dovecot's index and the page cache
        bare, ours = [], []
        for n in range(rounds):
            bare.append(count / await bare_fetch(server, count))
            ours.append(count / await gateway_import(server, workdir / f"t{n}.db", count))
        return statistics.median(bare), statistics.median(ours)


def customer_mail(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@customer.example>"
    msg["To"] = "support@gw.example.com"
    msg["Subject"] = f"Latency probe {n}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<lat{n}.{uuid.uuid4().hex[:8]}@customer.example>"
    msg.set_content(f"Hello, this is probe {n}.")
    return msg


@dataclass
class Latency:
    """Seconds per mail, each from the start of its SMTP send."""

    delivered: list[float]
    """until the MTA's 250 (dovecot-lda stored it), gateway phase"""
    bare: list[float]
    """until a bare aioimaplib client, IDLE-ing, was told and had fetched the mail"""
    stored: list[float]
    """until the gateway logged `message.received` (the conversation exists)"""


async def send(port: int, msg: EmailMessage, n: int) -> None:
    await aiosmtplib.send(
        msg, hostname="127.0.0.1", port=port, sender=f"c{n}@customer.example", recipients=[USER]
    )


async def latency(mails: int, workdir: Path) -> Latency:
    """Deliver `mails` one at a time to a bare IDLE client, then to the gateway."""
    with dovecot() as server:
        mta = Controller(LdaHandler(server), hostname="127.0.0.1", port=free_port())
        mta.start()
        try:
            bare = await bare_latency(server, mta.port, mails)
            delivered, stored = await gateway_latency(server, mta.port, mails, workdir)
            return Latency(delivered, bare, stored)
        finally:
            mta.stop()


async def bare_latency(server: Dovecot, port: int, mails: int) -> list[float]:
    """The same protocol steps as the adapter, nothing else: IDLE until EXISTS, DONE, fetch."""
    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(USER, PASSWORD)
    await client.select("INBOX")
    times = []
    for n in range(mails):
        idle = await client.idle_start(timeout=60)
        msg = customer_mail(mails + n)
        started = time.perf_counter()
        await send(port, msg, n)
        while not any(b"EXISTS" in bytes(line) for line in await client.wait_server_push(30)):
            pass
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        response = await client.uid("fetch", "*", "(UID BODY.PEEK[])")
        assert str(msg["Message-ID"]).encode() in b"".join(bytes(x) for x in response.lines)
        times.append(time.perf_counter() - started)
    await client.logout()
    return times


async def gateway_latency(
    server: Dovecot, port: int, mails: int, workdir: Path
) -> tuple[list[float], list[float]]:
    """The gateway's email channel IDLE-ing; return (until delivered, until stored) times.

    Its first pass imports what the bare phase left in the mailbox; timing starts after it.
    """
    gateway = await open_gateway(workdir / "latency.db", server)
    store = gateway.runtime.store
    delivered, stored = [], []
    try:
        await gateway.adapter.start()
        await gateway.adapter.wait_for(
            lambda: gateway.adapter.passes >= 1 and gateway.adapter.health().ok
        )
        cursor = await store.last_cursor()
        for n in range(mails):
            msg = customer_mail(n)
            started = time.perf_counter()
            await send(port, msg, n)
            delivered.append(time.perf_counter() - started)
            cursor = await wait_received(gateway, cursor, str(msg["Message-ID"]))
            stored.append(time.perf_counter() - started)
        return delivered, stored
    finally:
        await close_gateway(gateway)


async def wait_received(gateway: Gateway, cursor: str | None, message_id: str) -> str | None:
    """Wait on the event log (no polling sleep) until `message_id` is stored."""
    store = gateway.runtime.store
    async with asyncio.timeout(30):
        while True:
            events = await store.wait_events(cursor, timeout=30)
            for event in events:
                cursor = event.cursor
                if (
                    event.type == "message.received"
                    and event.message is not None
                    and event.message.provider_message_id == message_id
                ):
                    return cursor


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def dovecot_version() -> str:
    out = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True)
    return out.stdout.split()[0] if out.stdout else "?"


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="email-bench-") as tmp:
        workdir = Path(tmp)
        bare, ours = await throughput(args.messages, args.rounds, workdir)
        lat = await latency(args.mails, workdir)
    print(f"email benchmark: Dovecot {dovecot_version()}, SQLite synchronous=FULL")
    print()
    print(
        f"throughput: {args.messages} messages (10 fixture kinds), IMAP on loopback,"
        f" median of {args.rounds} rounds"
    )
    print(f"  {'path':<48} {'msgs/s':>9} {'ratio':>7}")
    print(f"  {'bare aioimaplib UID FETCH (batches of 10)':<48} {bare:>9.0f} {1.0:>7.2f}")
    print(f"  {'gateway: IMAP fetch + parse + ingest':<48} {ours:>9.0f} {ours / bare:>7.2f}")
    print()
    print(
        f"latency: {args.mails} mails one at a time, from the start of each SMTP send;"
        " delivered by dovecot-lda"
    )
    print(f"  {'until':<56} {'p50 s':>7} {'p99 s':>7} {'max s':>7}")
    rows = (
        ("delivered (the MTA's 250, after dovecot-lda)", lat.delivered),
        ("bare aioimaplib: IDLE told it (EXISTS), DONE, fetched", lat.bare),
        ("gateway: IDLE, fetch, parse, conversation stored", lat.stored),
    )
    for label, values in rows:
        print(
            f"  {label:<56} {percentile(values, 50):>7.3f} {percentile(values, 99):>7.3f}"
            f" {max(values):>7.3f}"
        )
    p50, p99 = percentile(lat.stored, 50), percentile(lat.stored, 99)
    print(
        f"  gateway / bare: p50 {p50 / percentile(lat.bare, 50):.2f},"
        f" p99 {p99 / percentile(lat.bare, 99):.2f}"
    )
    print(f"  target p99 < 2 s: {'met' if p99 < 2 else 'MISSED'} (p99 / target = {p99 / 2:.2f})")
    print(
        "  (Dovecot holds IDLE notifications back 500 ms, NOTIFY_DELAY_MSECS in its"
        " mailbox-watch.c: the floor for any IDLE client)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--mails", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
