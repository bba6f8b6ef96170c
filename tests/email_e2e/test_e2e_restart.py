"""Restarts through the real gateway: the gateway itself (a new app on the same database, SQLite
or Redis, and the same Dovecot) and the mail server (killed mid-IDLE, `/readyz` degraded until
it is back)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from plugins.email.cursor import live_key
from tests.api.conftest import TOKENS
from tests.email_e2e.conftest import CHANNEL, MailFactory, MailGateway, customer_mail


def mail_from(n: int) -> bytes:
    """Mail number n: two customers taking turns, so restarts cross open conversations."""
    who = ("ana", "Ana Souza") if n % 2 == 0 else ("bruno", "Bruno Lima")
    return customer_mail(
        message_id=f"<m{n}@customer.example>",
        sender=f"{who[1]} <{who[0]}@customer.example>",
        subject=f"Question {n}",
        text=f"This is mail {n}.",
    )


async def test_gateway_restart_without_duplicates_or_gaps(make_mail: MailFactory) -> None:
    first = await make_mail()
    for n in range(3):
        await first.deliver(mail_from(n))
    await first.wait_received(3)
    await first.stop()

    # mail that arrives while the gateway is down
    for n in range(3, 6):
        await first.deliver(mail_from(n))

    second = await make_mail()  # same database, same mailbox
    await second.wait_received(6)
    passes = second.adapter.passes
    await second.deliver(mail_from(6))  # and live mail after the restart, through IDLE
    received = await second.wait_received(7)
    # the pass that stored it has finished (its cursor saved)
    await second.wait_synced(lambda: second.adapter.passes > passes)

    pids = [e.message.provider_message_id for e in received if e.message is not None]
    assert pids == [f"<m{n}@customer.example>" for n in range(7)]
    waiting = await second.inbox("waiting")
    assert [c["contact"]["address"] for c in waiting] == [
        "ana@customer.example",
        "bruno@customer.example",
    ]
    for conversation, parity in zip(waiting, (0, 1), strict=True):
        body = await second.conversation(conversation["id"])
        texts = [m["text"] for m in body["messages"]]
        assert texts == [f"This is mail {n}." for n in range(7) if n % 2 == parity]

    blob = await second.gw.runtime.store.kv_get(live_key(CHANNEL))
    assert blob is not None and orjson.loads(blob)["last_uid"] == 7
    # the restarted gateway resumed at its cursor: it fetched nothing the first one stored
    # (the store's dedup would have hidden a re-read; its counter does not)
    ingested = await ingest_counts(second)
    assert ingested == {"stored": 4.0}


async def renumber_mailbox(mail: MailGateway) -> None:
    """As if the server renumbered the mailbox (a migration, a restore): the cursor names
    another UIDVALIDITY, and the next session reads the mailbox again. Returns after that
    session's first pass."""
    cursor = orjson.dumps({"uidvalidity": 1, "last_uid": 99}).decode()
    await mail.gw.runtime.store.kv_set(live_key(CHANNEL), cursor)
    await asyncio.to_thread(mail.dovecot.stop)
    await mail.wait_synced(lambda: not mail.adapter.health().ok)
    passes = mail.adapter.passes
    await asyncio.to_thread(mail.dovecot.start)
    await mail.wait_synced(lambda: mail.adapter.passes > passes)


async def test_another_mail_reusing_a_message_id_is_kept_and_refetches_still_dedup(
    make_mail: MailFactory,
) -> None:
    """Two senders' mails with one Message-ID (a script with a fixed id, a forged copy):
    each is stored, in its contact's conversation, and the reuse is logged. Fetched again
    (the mailbox renumbered), neither is stored twice. Before, the second was dropped as a
    duplicate with only an info line."""
    mail = await make_mail()
    reused = "<fixed-id@shop.example>"
    await mail.deliver(customer_mail(message_id=reused, text="Order 42 is late."))
    first = await mail.received(reused)
    other_mail = customer_mail(
        message_id=reused, sender="Bob <bob@other.example>", subject="Refund", text="Refund me."
    )
    with capture_logs() as logs:
        await mail.deliver(other_mail)
        second = (await mail.wait_received(2))[1]
        # logged once ingest answers, which is after the event: wait for the pass to end
        await mail.wait_synced(lambda: any(e["event"] == "email.message_id_reused" for e in logs))
    assert second.message is not None and second.conversation is not None
    assert first.conversation is not None
    assert second.message.provider_message_id.startswith(f"{reused}#")
    assert second.message.text == "Refund me."
    waiting = await mail.inbox("waiting")
    assert sorted(c["contact"]["address"] for c in waiting) == [
        "ana@customer.example",
        "bob@other.example",
    ]
    [warning] = [entry for entry in logs if entry["event"] == "email.message_id_reused"]
    assert warning["log_level"] == "warning"
    assert warning["provider_message_id"] == reused
    assert warning["stored_as"] == second.message.provider_message_id
    assert warning["conversation_id"] == second.conversation.id
    assert warning["first_conversation_id"] == first.conversation.id
    assert "Refund me" not in str(warning)  # never a mail's body

    await renumber_mailbox(mail)
    assert len(await mail.all_received()) == 2
    # Both fetched again: each dropped as a duplicate (the second one under its derived id).
    assert await ingest_counts(mail) == {"stored": 2.0, "duplicate": 4.0}


async def test_a_mail_naming_one_of_our_replies_ids_is_kept_and_our_own_copy_is_not(
    make_mail: MailFactory,
) -> None:
    """Re-audit: a customer mail whose Message-ID is one of our replies' (a broken client, a
    forged copy) was dropped as a duplicate of the reply, at info only. Only our own copy
    coming back (a Bcc) is that reply; a mailing list's copy of a customer's mail, `[List]`
    before its subject, is that mail too."""
    mail = await make_mail()
    await mail.deliver(customer_mail(message_id="<q1@customer.example>"))
    first = await mail.received("<q1@customer.example>")
    assert first.conversation is not None
    await mail.act(first.conversation.id, "accept")
    await mail.reply(first.conversation.id, "It ships today.")
    [sent] = mail.sent()
    ours = str(sent["Message-ID"])
    await mail.deliver(sent.as_bytes())  # our copy, Bcc'd back into the mailbox
    listed = customer_mail(message_id="<q1@customer.example>", subject="[Shop] Where is my order?")
    await mail.deliver(listed)
    with capture_logs() as logs:
        await mail.deliver(
            customer_mail(message_id=ours, sender="Carl <carl@c.example>", text="URGENT: refund")
        )
        carl = await mail.wait_event(
            lambda e: e.message is not None and e.message.text == "URGENT: refund"
        )
        await mail.wait_synced(lambda: any(e["event"] == "email.message_id_reused" for e in logs))
    assert carl.message is not None and carl.message.provider_message_id.startswith(f"{ours}#")
    texts = [e.message.text for e in await mail.all_received() if e.message is not None]
    assert texts == ["Hello, where is my order 42?", "URGENT: refund"]  # no copy stored


async def ingest_counts(mail: Any) -> dict[str, float]:
    """This process's `gateway_ingested_messages_total` for the channel, by outcome."""
    response = await mail.gw.client.get("/metrics")
    text = await response.text()
    pattern = rf'gateway_ingested_messages_total{{channel="{CHANNEL}",outcome="(\w+)"}} (\S+)'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text)}


async def readiness(mail: Any, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await mail.gw.client.get("/readyz", headers=headers)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body  # the gateway stays up; the channel is what degrades
    return body


@pytest.mark.slow
async def test_dovecot_restart_mid_idle(make_mail: MailFactory) -> None:
    """Kill Dovecot while the adapter IDLEs: /readyz lists the channel degraded, the adapter
    reconnects (capped backoff) once Dovecot is back, and no mail is lost or doubled."""
    mail = await make_mail()
    await mail.deliver(mail_from(0))
    await mail.received("<m0@customer.example>")
    ready = await readiness(mail)
    assert ready["channels"][CHANNEL]["ok"] is True and ready["degraded"] == []

    await asyncio.to_thread(mail.dovecot.stop)
    await mail.wait_synced(lambda: not mail.adapter.health().ok)
    ready = await readiness(mail)
    assert ready["status"] == "ready"
    assert ready["degraded"] == [CHANNEL]
    assert ready["channels"][CHANNEL]["ok"] is False
    assert ready["channels"][CHANNEL]["detail"] == ""  # why: for token holders only
    ready = await readiness(mail, TOKENS["maria"])
    assert "disconnected" in ready["channels"][CHANNEL]["detail"]

    await asyncio.to_thread(mail.dovecot.start)
    await mail.deliver(mail_from(1))  # arrived while the adapter was away
    await mail.received("<m1@customer.example>")
    await mail.wait_synced(lambda: mail.adapter.health().ok)
    ready = await readiness(mail)
    assert ready["degraded"] == [] and ready["channels"][CHANNEL]["ok"] is True

    await mail.deliver(mail_from(2))  # and IDLE works again
    received = await mail.wait_received(3)
    pids = [e.message.provider_message_id for e in received if e.message is not None]
    assert pids == [f"<m{n}@customer.example>" for n in range(3)]
