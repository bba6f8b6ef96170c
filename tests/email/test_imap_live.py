"""The IMAP reader against a real Dovecot: every fixture, IDLE, restarts, cursor, flags."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from gateway.clock import ManualClock
from gateway.model import DeliveryState, to_dict
from plugins.email.backfill import backfill
from plugins.email.cursor import live_key
from tests.email.conftest import (
    ADDRESS,
    FIXTURES,
    MemoryKV,
    RecordingInbound,
    email_config,
    fixture_files,
    require_dovecot,
)
from tests.email.servers import Dovecot, make_dovecot_root, remove_root
from tests.email.test_parse import NO_BOUNDARY

# A safety net so a broken test fails instead of hanging; tests never wait on time for state.
LIMIT = 20


def customer_mail(n: int, subject: str = "Order question") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ana Customer <ana{n}@customer.example>"
    msg["To"] = ADDRESS
    msg["Subject"] = f"{subject} {n}"
    msg["Date"] = format_datetime(datetime(2026, 11, 25, 6, n % 60, tzinfo=UTC))
    msg["Message-ID"] = make_msgid(idstring=f"n{n}", domain="customer.example")
    msg.set_content(f"Hello, this is message {n}.")
    return msg.as_bytes()


async def until(adapter: Any, predicate: Any) -> None:
    await asyncio.wait_for(adapter.wait_for(predicate), LIMIT)


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
async def test_every_fixture_arrives_through_imap(
    path: Any, dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    raw = path.read_bytes()
    uid = await dovecot.append(raw)
    config = email_config(dovecot.imap_settings(first_sync="all"))
    adapter = make_adapter(config)
    await adapter.start()
    await until(adapter, lambda: len(inbound.messages) == 1)

    message = inbound.messages[0]
    assert message.channel == "support-mail"
    assert message.channel_type == "email"
    assert message.provider == "imap"
    assert message.provider_message_id
    # imaplib's APPEND sends CRLF line ends; the stored raw is exactly what Dovecot returned.
    assert message.raw.encode("latin-1") == re.sub(rb"\r?\n", b"\r\n", raw)
    orjson.dumps(to_dict(message))  # JSON-safe end to end
    assert "\\Seen" not in dovecot.flags_sync(uid)


async def test_bounce_through_imap_fails_the_original_message(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    adapter = make_adapter(email_config(dovecot.imap_settings()))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    await dovecot.append((FIXTURES / "flanker_bounce_mailbox_full_verp.eml").read_bytes())
    await until(adapter, lambda: len(inbound.statuses) == 1)
    [status] = inbound.statuses
    assert status.provider_message_id == "<4E326A95.3010907@example.com>"
    assert status.status == DeliveryState.FAILED
    assert status.error_code == "5.2.2"
    assert status.error_message == "552 5.2.2 E4.12 user MAILBOX FULL"
    [bounce] = inbound.messages
    assert bounce.kind == "bounce" and bounce.wakes_conversation is False


async def test_auto_reply_through_imap_does_not_wake(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    adapter = make_adapter(email_config(dovecot.imap_settings()))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    await dovecot.append((FIXTURES / "chatwoot_non_utf_encoded_autoreply.eml").read_bytes())
    await dovecot.append(customer_mail(1))
    await until(adapter, lambda: len(inbound.messages) == 2)
    auto, human = inbound.messages
    assert (auto.kind, auto.wakes_conversation) == ("auto_reply", False)
    assert (human.kind, human.wakes_conversation) == ("email", True)
    assert inbound.statuses == []


async def test_idle_delivers_new_mail(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    adapter = make_adapter(email_config(dovecot.imap_settings()))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    assert adapter.health().ok

    await dovecot.append(customer_mail(1))
    await until(adapter, lambda: len(inbound.messages) == 1)
    assert inbound.messages[0].subject == "Order question 1"
    assert inbound.messages[0].text == "Hello, this is message 1."


async def test_first_start_skips_old_mail_by_default(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, make_adapter: Any
) -> None:
    await dovecot.append(customer_mail(1))
    adapter = make_adapter(email_config(dovecot.imap_settings()))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    assert inbound.messages == []
    await dovecot.append(customer_mail(2))
    await until(adapter, lambda: len(inbound.messages) == 1)
    assert inbound.messages[0].subject == "Order question 2"
    cursor = orjson.loads(kv.data[live_key("support-mail")])
    assert cursor["last_uid"] == 2


async def test_restart_without_duplicates_or_gaps(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, make_adapter: Any
) -> None:
    config = email_config(dovecot.imap_settings(first_sync="all"))
    for n in range(3):
        await dovecot.append(customer_mail(n))
    first = make_adapter(config)
    await first.start()
    await until(first, lambda: len(inbound.messages) == 3)
    await first.stop()

    for n in range(3, 6):
        await dovecot.append(customer_mail(n))
    second = make_adapter(config, kv_store=kv)
    await second.start()
    await until(second, lambda: second.passes >= 1)

    assert [m.subject for m in inbound.messages] == [f"Order question {n}" for n in range(6)]
    assert inbound.duplicates == 0


async def test_cursor_lost_refetch_is_deduplicated(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, make_adapter: Any
) -> None:
    """A stale cursor (crash before saving) re-fetches; ingest dedup drops the copies."""
    config = email_config(dovecot.imap_settings(first_sync="all"))
    for n in range(2):
        await dovecot.append(customer_mail(n))
    first = make_adapter(config)
    await first.start()
    await until(first, lambda: len(inbound.messages) == 2)
    await first.stop()

    cursor = orjson.loads(kv.data[live_key("support-mail")])
    kv.data[live_key("support-mail")] = orjson.dumps({**cursor, "last_uid": 0}).decode()
    second = make_adapter(config, kv_store=kv)
    await second.start()
    await until(second, lambda: second.passes >= 1)
    assert len(inbound.messages) == 2
    assert inbound.duplicates == 2


async def test_a_mail_without_message_id_delivered_twice_is_one_message(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """Its dedup key is its content: the trace headers each delivery adds make no copy."""
    mail = customer_mail(7).replace(b"Message-ID:", b"X-Dropped-Message-ID:")
    for hop in ("mx1", "mx2"):
        trace = f"Received: from {hop}.relay.example by imap.example; Wed, 25 Nov 2026\r\n"
        await dovecot.append(f"Delivered-To: {hop}@example\r\n{trace}".encode() + mail)
    await dovecot.append(customer_mail(8).replace(b"Message-ID:", b"X-Dropped-Message-ID:"))
    adapter = make_adapter(email_config(dovecot.imap_settings(first_sync="all")))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    assert [m.subject for m in inbound.messages] == ["Order question 7", "Order question 8"]
    assert inbound.duplicates == 1


async def test_uidvalidity_change_rereads_and_relies_on_dedup(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, make_adapter: Any
) -> None:
    config = email_config(dovecot.imap_settings(first_sync="all"))
    await dovecot.append(customer_mail(1))
    kv.data[live_key("support-mail")] = orjson.dumps({"uidvalidity": 1, "last_uid": 99}).decode()
    adapter = make_adapter(config)
    await adapter.start()
    await until(adapter, lambda: len(inbound.messages) == 1)
    cursor = orjson.loads(kv.data[live_key("support-mail")])
    assert cursor["uidvalidity"] != 1
    assert cursor["last_uid"] == 1


async def test_a_renumbered_mailbox_is_read_again_only_from_the_last_synced_day(
    dovecot: Dovecot,
    inbound: RecordingInbound,
    kv: MemoryKV,
    make_adapter: Any,
    mail_clock: ManualClock,
) -> None:
    """A new UIDVALIDITY (a server migration, a restore) makes every UID new. Mail from the
    day the cursor last moved (and the day before: time zones) is read again, and dedup drops
    what was stored; older mail stays out. Reading the whole mailbox again filled the queue
    with 2,000 old conversations (an audit)."""
    config = email_config(dovecot.imap_settings(first_sync="new"))
    for n in range(3):  # long before the gateway last read this mailbox
        await dovecot.append(customer_mail(n, "Old"), date=f"0{n + 1}-Oct-2026 10:00:00 +0000")
    for n in range(2):  # since
        await dovecot.append(customer_mail(n, "New"), date=f"2{n + 5}-Nov-2026 10:00:00 +0000")
    day = mail_clock.now().date().isoformat()
    old_cursor = {"uidvalidity": 1, "last_uid": 99, "synced_on": day}
    kv.data[live_key("support-mail")] = orjson.dumps(old_cursor).decode()
    adapter = make_adapter(config)
    with capture_logs() as logs:
        await adapter.start()
        await until(adapter, lambda: adapter.passes >= 1)
    assert sorted(m.subject or "" for m in inbound.messages) == ["New 0", "New 1"]
    cursor = orjson.loads(kv.data[live_key("support-mail")])
    assert cursor["uidvalidity"] != 1 and cursor["last_uid"] == 5
    # The warning says what is left unread (the Old mail) and how to import it.
    [warning] = [e for e in logs if e["event"] == "email.imap.uidvalidity_changed"]
    assert warning["log_level"] == "warning"
    assert warning["not_read_before"] == "2026-11-24"
    assert warning["backfill"] == "gateway email backfill --channel support-mail"
    assert "not read again" in warning["hint"] and warning["backfill"] in warning["hint"]
    # and that command does import them, once
    assert await backfill(config, inbound, kv, progress=False) == 3
    subjects = sorted(m.subject or "" for m in inbound.messages)
    assert subjects == ["New 0", "New 1", "Old 0", "Old 1", "Old 2"]


@pytest.mark.parametrize(
    ("written", "wire"),
    [
        ("Atención", "Atenci&APM-n"),  # U+00F3 as UTF-16BE 00 F3, base64 "APM"
        ("Atenci&APM-n", "Atenci&APM-n"),
        ("R&D", "R&-D"),  # a bare & is &- (re-audit: "A&B Support" was refused as invalid)
    ],
)
async def test_a_mailbox_named_with_non_ascii_characters_is_read(
    written: str, wire: str, dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """`imap.mailbox: "Atención"` is selected as `Atenci&APM-n` (modified UTF-7, RFC 3501
    5.1.3): sent as raw UTF-8 the server refused it and the channel never connected. A name
    already written in modified UTF-7 (ASCII) is sent as written; one with a bare `&` is not
    valid modified UTF-7, so it is encoded too."""
    listed = await asyncio.to_thread(dovecot.create_sync, wire)
    assert any(line.endswith(f'"{wire}"') or line.endswith(f" {wire}") for line in listed)
    await dovecot.append(customer_mail(5), mailbox=wire)
    await dovecot.append(customer_mail(6))  # INBOX: not this channel's mailbox
    adapter = make_adapter(email_config(dovecot.imap_settings(mailbox=written, first_sync="all")))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    assert adapter.health().ok
    assert [m.subject for m in inbound.messages] == ["Order question 5"]


async def test_malformed_mime_is_stored_readable_and_logged(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """A multipart without a boundary: stored with its payload as the text, and logged as
    `email.malformed` with the parser's defects and the mail's id (never its body). Before,
    it was stored with no text and nothing in the log."""
    await dovecot.append(NO_BOUNDARY)
    adapter = make_adapter(email_config(dovecot.imap_settings(first_sync="all")))
    with capture_logs() as logs:
        await adapter.start()
        await until(adapter, lambda: adapter.passes >= 1)
    [message] = inbound.messages
    assert message.text == "Hello, my order 42 never came.\nAna"
    [line] = [entry for entry in logs if entry["event"] == "email.malformed"]
    assert line["log_level"] == "warning"
    assert line["provider_message_id"] == "<nb1@customer.example>"
    assert "NoBoundaryInMultipartDefect" in line["defects"]
    assert "order 42" not in str(line)


async def test_polling_when_idle_is_not_used(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """Without IDLE the loop waits poll_interval between passes; trigger() starts one now."""
    adapter = make_adapter(email_config(dovecot.imap_settings(idle=False, poll_interval="1h")))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1)
    await dovecot.append(customer_mail(7))
    adapter.trigger()
    await until(adapter, lambda: len(inbound.messages) == 1)


@pytest.mark.slow
async def test_dovecot_restart_mid_idle(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    adapter = make_adapter(email_config(dovecot.imap_settings()))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1 and adapter.health().ok)

    await asyncio.to_thread(dovecot.stop)
    await until(adapter, lambda: not adapter.health().ok)
    assert "disconnected" in adapter.health().detail

    await asyncio.to_thread(dovecot.start)
    await dovecot.append(customer_mail(1))
    await until(adapter, lambda: len(inbound.messages) == 1 and adapter.health().ok)
    await dovecot.append(customer_mail(2))
    await until(adapter, lambda: len(inbound.messages) == 2)
    assert inbound.duplicates == 0


async def test_idle_is_reissued_after_idle_timeout(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """Each IDLE ends after idle_timeout and a new pass + IDLE follows (servers cut at 30m)."""
    adapter = make_adapter(email_config(dovecot.imap_settings(idle_timeout="100ms")))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 3)
    assert adapter.health().ok
    await dovecot.append(customer_mail(3))
    await until(adapter, lambda: len(inbound.messages) == 1)


async def test_a_session_that_stops_answering_is_replaced(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """The server process of our session freezes (the connection stays open, nothing answers):
    when the IDLE ends, DONE gets no answer within `timeout`, and a new session picks the mail
    up. Found by an outside audit, with the old 25-minute default in the way."""
    settings = dovecot.imap_settings(idle_timeout="300ms", timeout="500ms")
    adapter = make_adapter(email_config(settings))
    await adapter.start()
    await until(adapter, lambda: adapter.passes >= 1 and adapter.health().ok)
    assert dovecot.proc is not None
    pgrep = await asyncio.create_subprocess_exec(
        "pgrep", "-g", str(dovecot.proc.pid), "-x", "imap", stdout=asyncio.subprocess.PIPE
    )
    sessions = (await pgrep.communicate())[0].decode().split()
    assert len(sessions) == 1, sessions  # only the adapter is connected
    os.kill(int(sessions[0]), signal.SIGSTOP)
    try:
        await dovecot.append(customer_mail(4))  # through a session of its own
        await until(adapter, lambda: len(inbound.messages) == 1)
    finally:
        os.kill(int(sessions[0]), signal.SIGCONT)
    assert inbound.duplicates == 0


async def test_wrong_password_keeps_retrying_degraded(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    adapter = make_adapter(email_config(dovecot.imap_settings(password="wrong")))
    await adapter.start()
    await until(adapter, lambda: "login refused" in adapter.health().detail)
    assert not adapter.health().ok
    assert "wrong" not in adapter.health().detail


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_tls_modes(mode: str, inbound: RecordingInbound, make_adapter: Any) -> None:
    """Implicit TLS and STARTTLS against Dovecot with a certificate we trust explicitly."""
    require_dovecot()
    root = make_dovecot_root()
    server = Dovecot(root=root, tls=True)
    server.write_config()
    try:
        server.start()
        port = server.tls_port if mode == "implicit" else server.port
        config = email_config(server.imap_settings(tls=mode, port=port))
        context = ssl.create_default_context(cafile=str(server.cert_path))
        adapter = make_adapter(config, imap_tls_context=context)
        await adapter.start()
        await until(adapter, lambda: adapter.passes >= 1)
        await server.append(customer_mail(1))
        await until(adapter, lambda: len(inbound.messages) == 1)
        await adapter.stop()

        untrusted = make_adapter(config)  # the system CAs do not know our certificate
        await untrusted.start()
        await until(untrusted, lambda: "disconnected" in untrusted.health().detail)
        assert not untrusted.health().ok
    finally:
        server.stop()
        remove_root(root)


async def test_starttls_refused_when_server_cannot(
    dovecot: Dovecot, inbound: RecordingInbound, make_adapter: Any
) -> None:
    """`tls: starttls` never falls back to clear text (and never sends the password)."""
    adapter = make_adapter(email_config(dovecot.imap_settings(tls="starttls")))
    await adapter.start()
    await until(adapter, lambda: "STARTTLS" in adapter.health().detail)
    assert not adapter.health().ok
    assert "Login: user=" not in dovecot.log_path.read_text()
