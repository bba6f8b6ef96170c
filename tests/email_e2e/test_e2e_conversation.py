"""A mail conversation through the real gateway: IDLE delivery, an agent's threaded replies
received by aiosmtpd, the customer's answers joining (or, after a close, linking to) the
conversation, bounces failing our message, auto-replies waking nobody."""

from __future__ import annotations

import re
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiosmtplib
import pytest

from gateway.model import DeliveryState, iso
from tests.email.conftest import FIXTURES
from tests.email.servers import USER, Mta
from tests.email_e2e.conftest import ADDRESS, LIMIT, MailFactory, MailGateway, customer_mail

C1 = "<c1.order42@customer.example>"
C2 = "<c2.order42@customer.example>"
C3 = "<c3.order42@customer.example>"


def ids(value: Any) -> list[str]:
    return re.findall(r"<[^<>]+>", str(value or ""))


async def open_and_answer(mail: MailGateway) -> tuple[str, EmailMessage]:
    """The customer writes; maria accepts and answers. Return the conversation and our mail."""
    await mail.deliver(customer_mail(message_id=C1))
    received = await mail.received(C1)
    assert received.conversation is not None
    conversation_id = received.conversation.id
    await mail.act(conversation_id, "accept")
    await mail.reply(conversation_id, "Hi Ana, it ships today.")
    return conversation_id, mail.sent()[-1]


async def test_idle_delivery_opens_a_waiting_conversation(make_mail: MailFactory) -> None:
    mail = await make_mail()
    assert mail.adapter.health().ok
    await mail.deliver(customer_mail(message_id=C1))
    event = await mail.received(C1)
    assert event.conversation is not None

    [summary] = await mail.inbox("waiting")
    assert summary["id"] == event.conversation.id
    assert summary["channel_type"] == "email" and summary["queue"] == "support"
    assert summary["contact"] == {"address": "ana@customer.example", "display_name": "Ana Souza"}
    assert summary["subject"] == "Where is my order?"
    assert summary["preview"] == "Hello, where is my order 42?"
    assert summary["can_reply"] is True


async def test_reply_window_runs_from_arrival_not_from_the_senders_clock(
    make_mail: MailFactory,
) -> None:
    """A customer whose PC clock is two days behind, on a channel with a 24 h reply window:
    the conversation waits and can be answered (email has no templates), the message keeps
    its Date as `sent_at`, and a restart (which measures windows again) keeps it so."""
    mail = await make_mail(channel_fields={"reply_window": "24h"})
    now = mail.gw.clock.now()
    dated = now - timedelta(days=2)
    await mail.deliver(customer_mail(message_id=C1, date=dated))
    event = await mail.received(C1)
    assert event.message is not None and event.message.sent_at == dated

    [summary] = await mail.inbox("waiting")
    assert summary["can_reply"] is True
    assert summary["window_expires_at"] == iso(now + timedelta(hours=24))
    await mail.stop()

    again = await make_mail(channel_fields={"reply_window": "24h"})  # same database
    [summary] = await again.inbox("waiting")
    assert summary["can_reply"] is True
    await again.act(summary["id"], "accept")
    await again.reply(summary["id"], "Hi Ana, it ships today.")
    [answer] = again.sent()
    assert str(answer["To"]) == "Ana Souza <ana@customer.example>"


async def test_contact_form_requests_are_separate_and_answered_to_the_visitor(
    make_mail: MailFactory,
) -> None:
    """Two visitors use a website's form, which mails from one no-reply address with the
    visitor in Reply-To: two conversations, and the answer reaches the visitor."""
    mail = await make_mail()
    form = "Shop website <noreply@shop.example>"
    forms = [
        ("<form1@shop.example>", "Ana Souza <ana@customer.example>"),
        ("<form2@shop.example>", "Bob <bob@other.example>"),
    ]
    for message_id, visitor in forms:
        raw = customer_mail(message_id=message_id, sender=form, headers={"Reply-To": visitor})
        await mail.deliver(raw)
        await mail.received(message_id)
    waiting = await mail.inbox("waiting")
    assert [c["contact"]["address"] for c in waiting] == [
        "ana@customer.example",
        "bob@other.example",
    ]
    await mail.act(waiting[0]["id"], "accept")
    await mail.reply(waiting[0]["id"], "Hi Ana, it ships today.")
    [envelope] = mail.smtp.handler.messages
    assert envelope.rcpt_tos == ["ana@customer.example"]
    assert str(mail.sent()[-1]["To"]) == "Ana Souza <ana@customer.example>"


async def test_mail_delivered_over_smtp_reaches_the_inbox(make_mail: MailFactory, mta: Mta) -> None:
    """The production path for incoming mail: an MTA accepts it over SMTP and Dovecot's
    delivery agent stores it; the IDLE-ing adapter picks it up."""
    mail = await make_mail()
    raw = customer_mail(message_id=C1, text="Sent through a real delivery.")
    await aiosmtplib.send(
        raw,
        hostname="127.0.0.1",
        port=mta.port,
        sender="ana@customer.example",
        recipients=[USER],
        timeout=LIMIT,
    )
    assert mta.handler.delivered == 1
    event = await mail.received(C1)
    assert event.message is not None and event.message.text == "Sent through a real delivery."
    [waiting] = await mail.inbox("waiting")
    assert waiting["contact"]["address"] == "ana@customer.example"


async def test_agent_reply_is_threaded_and_the_answer_joins(make_mail: MailFactory) -> None:
    mail = await make_mail()
    conversation_id, first = await open_and_answer(mail)

    # what aiosmtpd received: a reply mail clients thread under the customer's mail
    [envelope] = mail.smtp.handler.messages
    assert envelope.mail_from == ADDRESS and envelope.rcpt_tos == ["ana@customer.example"]
    r1 = first["Message-ID"]
    assert r1 and r1.endswith("@gw.example.com>")
    assert first["In-Reply-To"] == C1
    assert ids(first["References"]) == [C1]
    assert first["Subject"] == "Re: Where is my order?"
    assert str(first["To"]) == "Ana Souza <ana@customer.example>"
    body = first.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Hi Ana, it ships today."

    # the store knows our Message-ID: the message is sent, under the id the customer will quote
    conversation = await mail.conversation(conversation_id)
    outbound = conversation["messages"][-1]
    assert (outbound["direction"], outbound["status"]) == ("out", "sent")
    assert outbound["provider_message_id"] == r1

    # The customer answers our mail. Their client sets In-Reply-To only (no References, as
    # some do): the answer still joins the open conversation.
    await mail.deliver(
        customer_mail(
            message_id=C2, subject="Re: Where is my order?", text="Great, thanks!", in_reply_to=r1
        )
    )
    answer = await mail.received(C2)
    assert answer.conversation is not None and answer.conversation.id == conversation_id
    conversation = await mail.conversation(conversation_id)
    assert conversation["state"] == "active" and conversation["agent"] == "maria"
    assert [m["provider_message_id"] for m in conversation["messages"]] == [C1, r1, C2]
    assert await mail.inbox("waiting") == []

    # The second reply answers the customer's last mail, and References carries the whole
    # conversation, our own first reply included (the customer's mail did not list it).
    await mail.reply(conversation_id, "You are welcome.")
    second = mail.sent()[-1]
    assert second["In-Reply-To"] == C2
    assert ids(second["References"]) == [C1, r1, C2]
    # On the wire, not only once parsed: our own long Message-ID must go out as written, not
    # as RFC 2047 encoded words (which a parser decodes back, but mail clients do not).
    wire = mail.smtp.handler.messages[-1].content
    head = wire.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    assert r1.encode() in head
    assert b"=?" not in head.split(b"\nReferences:", 1)[1].split(b"\n", 1)[0]
    assert all(b"=?" not in line for line in head.split(b"\n") if line.startswith(b" <"))
    assert second["Subject"] == "Re: Where is my order?"
    assert second["Message-ID"] not in (r1, C1, C2)


NOTIFICATION = "<order-42-shipped@notify.shop.example>"
QUOTED = (
    "On Tue, 24 Nov 2026 at 09:00, Shop <noreply@shop.example> wrote:\n"
    "> Your order 42 has shipped.\n"
    "> Carrier: FastPost, tracking number FP-123-456-789.\n"
)


async def test_an_answer_to_mail_the_channel_never_had_is_kept_whole(
    make_mail: MailFactory,
) -> None:
    """A customer answers the shop's order notification (sent by another system): its
    In-Reply-To names a mail this channel never stored, so it is their first mail here and
    is kept whole, the quoted tracking details included. They were cut as reply history."""
    mail = await make_mail()
    raw = customer_mail(
        message_id=C1,
        subject="Re: Your order 42 has shipped",
        text=f"It never arrived, can you check?\n\n{QUOTED}",
        in_reply_to=NOTIFICATION,
        references=NOTIFICATION,
    )
    await mail.deliver(raw)
    event = await mail.received(C1)
    assert event.message is not None and event.message.text is not None
    assert "FP-123-456-789" in event.message.text
    assert event.message.text.startswith("It never arrived, can you check?")


async def test_an_answer_to_our_reply_has_its_quoted_history_cut(make_mail: MailFactory) -> None:
    """A reply threading onto mail the channel has (our own answer) shows what the customer
    newly wrote; the quote stays in `extra.full_text`."""
    mail = await make_mail()
    conversation_id, ours = await open_and_answer(mail)
    quoted = "On Wed, 25 Nov 2026, ACME Support wrote:\n> Hi Ana, it ships today.\n"
    await mail.deliver(
        customer_mail(
            message_id=C2,
            subject="Re: Where is my order?",
            text=f"Great, thanks!\n\n{quoted}",
            in_reply_to=ours["Message-ID"],
        )
    )
    event = await mail.received(C2)
    assert event.message is not None and event.conversation is not None
    assert event.conversation.id == conversation_id
    assert event.message.text == "Great, thanks!"
    assert "it ships today" in event.message.extra["full_text"]


async def test_a_re_subject_without_references_counts_only_for_a_known_contact(
    make_mail: MailFactory,
) -> None:
    """A `Re:` subject and no In-Reply-To / References (a client that sends none): a reply
    when the channel already has mail of that contact, else a first mail, kept whole."""
    mail = await make_mail()
    text = f"Where is it?\n\n{QUOTED}"
    stranger = customer_mail(
        message_id=C1, subject="Re: Your order 42 has shipped", text=text, sender="bo@b.example"
    )
    await mail.deliver(stranger)
    first = await mail.received(C1)
    assert first.message is not None and "FP-123-456-789" in (first.message.text or "")

    await mail.deliver(customer_mail(message_id=C2, subject="Order 42"))  # Ana writes first
    await mail.received(C2)
    again = customer_mail(message_id=C3, subject="Re: Your order 42 has shipped", text=text)
    await mail.deliver(again)
    known = await mail.received(C3)
    assert known.message is not None and known.message.text == "Where is it?"


async def test_an_attachment_downloads_under_its_real_name(make_mail: MailFactory) -> None:
    """`résumé façade.pdf` downloads with its real name in `filename*` (RFC 6266, RFC 5987)
    beside the ASCII fallback; the fallback alone saved it as `r_sum__fa_ade.pdf`."""
    mail = await make_mail()
    msg = BytesParser(policy=policy.default).parsebytes(customer_mail(message_id=C1))
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(b"%PDF-1.4 cv", maintype="application", subtype="pdf", filename=CV)
    await mail.deliver(msg.as_bytes())
    event = await mail.received(C1)
    assert event.message is not None and event.conversation is not None
    assert [a.filename for a in event.message.attachments] == [CV]
    resp = await mail.gw.client.get(
        f"/api/v1/conversations/{event.conversation.id}/messages/{event.message.id}/attachments/0",
        headers=mail.gw.auth("maria"),
    )
    assert resp.status == 200 and await resp.read() == b"%PDF-1.4 cv"
    disposition = resp.headers["Content-Disposition"]
    assert disposition == (
        'inline; filename="r_sum__fa_ade.pdf";'
        " filename*=UTF-8''r%C3%A9sum%C3%A9%20fa%C3%A7ade.pdf"
    )
    # what a browser makes of it (RFC 6266 4.3: filename* first): the real name
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == CV


CV = "résumé façade.pdf"


async def test_answer_to_a_closed_conversation_opens_a_linked_one(make_mail: MailFactory) -> None:
    mail = await make_mail()
    first_id, first = await open_and_answer(mail)
    r1 = first["Message-ID"]
    await mail.act(first_id, "close")

    await mail.deliver(
        customer_mail(
            message_id=C2,
            subject="Re: Where is my order?",
            text="It did not arrive.\n\nOn Tue, ACME Support wrote:\n> Hi Ana, it ships today.",
            in_reply_to=r1,
            references=f"{C1} {r1}",
        )
    )
    event = await mail.received(C2)
    assert event.conversation is not None
    second_id = event.conversation.id
    assert second_id != first_id

    [waiting] = await mail.inbox("waiting")
    assert waiting["id"] == second_id
    assert waiting["previous_conversation_id"] == first_id
    assert waiting["preview"] == "It did not arrive."
    old = await mail.conversation(first_id)
    assert old["state"] == "closed"
    assert [m["provider_message_id"] for m in old["messages"]] == [C1, r1]
    new = await mail.conversation(second_id)
    [message] = new["messages"]
    assert message["text"] == "It did not arrive."
    assert "ships today" in message["extra"]["full_text"]

    # The reply in the new conversation continues the customer's whole thread.
    await mail.act(second_id, "accept", agent="jose")
    await mail.reply(second_id, "Sorry, we are sending another one.", agent="jose")
    reply = mail.sent()[-1]
    assert reply["In-Reply-To"] == C2
    assert ids(reply["References"]) == [C1, r1, C2]


async def test_a_new_mail_after_close_is_a_new_unlinked_conversation(
    make_mail: MailFactory,
) -> None:
    mail = await make_mail()
    first_id, _ = await open_and_answer(mail)
    await mail.act(first_id, "close")
    await mail.deliver(customer_mail(message_id=C3, subject="Another question"))
    event = await mail.received(C3)
    assert event.conversation is not None and event.conversation.id != first_id
    [waiting] = await mail.inbox("waiting")
    assert waiting["previous_conversation_id"] is None


# -- bounces ------------------------------------------------------------------------------

BOUNCES = {
    # fixture: (the Message-ID it reports as undeliverable, DSN status, diagnostic start)
    "chatwoot_bounced_gmail_dsn.eml": (
        "<conversation/93775311-9416-4428-964b-862001f8a8b2/messages/27855337@gmail.com>",
        "5.1.1",
        "550 5.1.1 The email account that you tried to reach does not exist.",
    ),
    "cpython_msg_16_dsn_disk_quota.eml": (
        "<002001c144a6$8752e060$56104586@oxy.edu>",
        "5.0.0",
        "recipient reached disk quota",
    ),
    "flanker_bounce_mailbox_full_verp.eml": (
        "<4E326A95.3010907@example.com>",
        "5.2.2",
        "552 5.2.2 E4.12 user MAILBOX FULL",
    ),
}


@pytest.mark.parametrize("fixture", sorted(BOUNCES))
async def test_bounce_marks_our_message_failed(fixture: str, make_mail: MailFactory) -> None:
    """A real DSN (three servers' formats), rewritten to report our reply, fails that reply."""
    original, status, diagnostic = BOUNCES[fixture]
    mail = await make_mail()
    conversation_id, ours = await open_and_answer(mail)
    our_id = ours["Message-ID"]
    raw = (FIXTURES / fixture).read_bytes()
    assert original.encode() in raw
    await mail.deliver(raw.replace(original.encode(), our_id.encode()))

    failed = await mail.wait_event(
        lambda e: (
            e.type == "message.status"
            and e.message is not None
            and e.message.provider_message_id == our_id
            and e.message.status == DeliveryState.FAILED
        )
    )
    assert failed.message is not None
    conversation = await mail.conversation(conversation_id)
    outbound = next(m for m in conversation["messages"] if m["provider_message_id"] == our_id)
    assert outbound["status"] == "failed"
    assert outbound["error_code"] == status
    assert outbound["error_message"].startswith(diagnostic)

    # The report is kept with the conversation it concerns, and wakes nobody.
    bounce = conversation["messages"][-1]
    assert bounce["kind"] == "bounce" and bounce["direction"] == "in"
    assert conversation["state"] == "active" and conversation["agent"] == "maria"
    assert await mail.inbox("waiting") == []


# -- auto-replies -------------------------------------------------------------------------


def vacation_reply(in_reply_to: str | None, message_id: str) -> bytes:
    return customer_mail(
        message_id=message_id,
        subject="Out of office: Re: Where is my order?",
        text="I am on vacation until Monday.",
        in_reply_to=in_reply_to,
        references=in_reply_to,
        headers={"Auto-Submitted": "auto-replied"},
    )


async def test_auto_reply_never_wakes_a_closed_conversation(make_mail: MailFactory) -> None:
    mail = await make_mail()
    conversation_id, ours = await open_and_answer(mail)
    await mail.act(conversation_id, "close")
    sent_before = len(mail.smtp.handler.messages)

    # the customer's vacation responder answers our reply; a robot with no thread; a
    # subject-only "Automatic reply" with no thread either
    await mail.deliver(vacation_reply(ours["Message-ID"], "<ooo1@customer.example>"))
    await mail.deliver(vacation_reply(None, "<ooo2@customer.example>"))
    await mail.deliver((FIXTURES / "chatwoot_non_utf_encoded_autoreply.eml").read_bytes())
    received = await mail.wait_received(4)
    assert [e.message.kind for e in received if e.message is not None] == [
        "email",
        "auto_reply",
        "auto_reply",
        "auto_reply",
    ]

    assert await mail.inbox("waiting") == []
    assert await mail.inbox("active") == []
    closed = await mail.conversation(conversation_id)
    assert closed["state"] == "closed"
    assert closed["messages"][-1]["provider_message_id"] == "<ooo1@customer.example>"
    assert closed["messages"][-1]["kind"] == "auto_reply"
    # the unthreaded ones are kept, in closed conversations of their own
    archived = {c["id"] for c in await mail.inbox("closed")} - {conversation_id}
    assert len(archived) == 2
    # and nothing answered any of them
    assert len(mail.smtp.handler.messages) == sent_before


async def test_auto_reply_in_an_open_conversation_changes_nothing(make_mail: MailFactory) -> None:
    mail = await make_mail()
    await mail.deliver(customer_mail(message_id=C1))
    first = await mail.received(C1)
    assert first.conversation is not None
    before = await mail.conversation(first.conversation.id)
    await mail.deliver(vacation_reply(C1, "<ooo1@customer.example>"))
    auto = await mail.received("<ooo1@customer.example>")
    assert auto.conversation is not None and auto.conversation.id == first.conversation.id
    after = await mail.conversation(first.conversation.id)
    assert after["state"] == "waiting"
    assert after["queued_at"] == before["queued_at"]
    assert after["last_customer_message_at"] == before["last_customer_message_at"]


def test_bounce_fixtures_exist() -> None:
    for name in BOUNCES:
        assert Path(FIXTURES / name).exists()


async def test_a_reply_in_a_very_long_thread_answers_its_latest_mail(
    make_mail: MailFactory,
) -> None:
    """Over a thousand mails in one conversation: the reply still answers the last one (it
    was threaded under the thousandth, the last of the oldest thousand read)."""
    from email.utils import make_msgid

    from gateway.model import Contact, InboundMessage

    mail = await make_mail()
    ingest = mail.gw.runtime.ingestor
    mail_ids = [make_msgid(domain="customer.example") for _ in range(1003)]
    for n, message_id in enumerate(mail_ids):
        result = await ingest.message(
            InboundMessage(
                channel="support-mail",
                channel_type="email",
                provider="imap",
                provider_message_id=message_id,
                contact=Contact("ana@customer.example", "Ana Souza"),
                sent_at=mail.gw.clock.now(),
                text=f"mail {n}",
                subject="Where is my order?",
            )
        )
    conversation_id = result.conversation.id
    await mail.act(conversation_id, "accept")
    await mail.reply(conversation_id, "Answering your latest mail.")
    sent = mail.sent()[-1]
    assert sent["In-Reply-To"] == mail_ids[-1]
    assert ids(sent["References"])[-1] == mail_ids[-1]
