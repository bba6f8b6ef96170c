"""Every real mail of shared/fixtures/email, APPENDed to Dovecot, read by the IMAP adapter of a
running gateway, stored in its store (SQLite, Redis) and read back through the agent API.

The expectations are written out per fixture (read off the .eml files), not recomputed with
the parser, so this checks the parsing as well as the trip through ingest, store and API.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.email.conftest import fixture_files
from tests.email_e2e.conftest import CHANNEL, MailFactory


@dataclass(frozen=True)
class Expected:
    kind: str
    state: str
    """The state the mail leaves its conversation in: a person's mail waits for an agent;
    an auto-reply or a bounce for mail we never sent is kept, closed, waking nobody."""
    address: str
    display_name: str
    subject: str
    text: str
    """The start of what the agent sees: the newly written part, quotes stripped on a reply
    to mail the channel has (the replies here answer mail it never had: kept whole)."""
    full_text: str
    """A piece of the whole body, kept in `extra.full_text`."""
    attachments: tuple[tuple[str | None, str, str, int], ...] = ()
    """(filename, mime type, kind, size) of each attachment. Sizes are those of the mail as
    delivered: IMAP APPEND sends CRLF line ends, so a text part counts two bytes per line end
    where the .eml file has one."""


EXPECTED: dict[str, Expected] = {
    "chatwoot_bounced_gmail_dsn": Expected(
        kind="bounce",
        state="closed",
        address="mailer-daemon@googlemail.com",
        display_name="Mail Delivery Subsystem",
        subject="Delivery Status Notification (Failure)",
        text="** Address not found **",
        full_text="wasn't delivered to alex.jones@fictionalcorp.com",
        attachments=(
            ("icon.png", "image/png", "image", 0),
            (None, "message/delivery-status", "document", 1),
            (None, "message/rfc822", "document", 515),
        ),
    ),
    "chatwoot_non_utf_encoded_autoreply": Expected(
        kind="auto_reply",
        state="closed",
        address="example@gmail.com",
        display_name="متجر سوق نت",
        subject="أهلين عميلنا الكريم",
        text="أنظروا، أنا أحتاجها فقط لتقوم بالتدقيق في مقالتي الشخصية",
        full_text="أنظروا",
    ),
    "chatwoot_references_malformed_multipart": Expected(
        kind="email",
        state="waiting",
        address="sony@chatwoot.com",
        display_name="Sony Mathew",
        subject="Discussion: Let's debate these attachments",
        text="References Email",
        full_text="References Email",
    ),
    "cpython_msg_07_multipart_gif_attachments": Expected(
        kind="email",
        state="waiting",
        address="barry@digicool.com",
        display_name="Barry",
        subject="Here is your dingus fish",
        text="Hi there,\n\nThis is the dingus fish.",
        full_text="This is the dingus fish.",
        attachments=(("dingusfish.gif", "image/gif", "image", 3512),),
    ),
    "cpython_msg_16_dsn_disk_quota": Expected(
        kind="bounce",
        state="closed",
        address="postmaster@ucla.edu",
        display_name="Internet Mail Delivery",
        subject="Delivery Notification: Delivery has failed",
        text="This report relates to a message you sent",
        full_text="Message-id: <002001c144a6$8752e060$56104586@oxy.edu>",
        attachments=(
            (None, "message/delivery-status", "document", 98),
            (None, "message/rfc822", "document", 2646),
        ),
    ),
    "flanker_bounce_mailbox_full_verp": Expected(
        kind="bounce",
        state="closed",
        address="mailer-daemon@aol.com",
        display_name="Mail Delivery System",
        subject="Undelivered Mail Returned to Sender",
        text="*** ATTENTION ***",
        full_text="Your e-mail is being returned to you",
        attachments=(
            (None, "message/delivery-status", "document", 315),
            (None, "text/rfc822-headers", "document", 2036),
        ),
    ),
    "mailparser_gb2312_8bit_rfc2047": Expected(
        kind="email",
        state="waiting",
        address="baoguan@hotmail.com",
        display_name="张先生",
        subject="代开各地增值税发票",
        text="你好\uff01我公司可代开各类增值税发票",
        full_text="13662615434张经理",
    ),
    "mailparser_mixed_alternative_qp_iso8859": Expected(
        kind="email",
        state="waiting",
        address="oneil.844@randtelekom.com.tr",
        display_name="Ava Oneil",
        subject="Hi there",
        text="I am sending you the bills of the goods we delivered to you in the attachment",
        full_text="bills of the goods",
        attachments=(("message.txt", "text/plain", "document", 385),),
    ),
    "talon_gmail_reply_alternative": Expected(
        kind="email",
        state="waiting",
        address="xxx@gmail.com",
        display_name="Megan One",
        subject="Re: Test",
        text="Hello",
        full_text="Megan One <xxx@gmail.com> wrote:",
    ),
    "talon_yahoo_reply_in_reply_to": Expected(
        kind="email",
        state="waiting",
        address="xxx@yahoo.com",
        display_name="Alex Q",
        subject="Re: Test",
        text="Hello",
        full_text="----- Original Message -----",
    ),
}


def test_every_fixture_has_expectations() -> None:
    assert sorted(EXPECTED) == [p.stem for p in fixture_files()]


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
async def test_fixture_through_the_real_gateway(path: Path, make_mail: MailFactory) -> None:
    expected = EXPECTED[path.stem]
    mail = await make_mail()
    await mail.deliver(path.read_bytes())
    [received] = await mail.wait_received(1)
    assert received.message is not None and received.conversation is not None
    conversation_id = received.conversation.id

    listed = await mail.inbox(expected.state)
    [summary] = [c for c in listed if c["id"] == conversation_id]
    assert summary["channel"] == CHANNEL and summary["channel_type"] == "email"
    assert summary["queue"] == "support"
    assert summary["contact"] == {
        "address": expected.address,
        "display_name": expected.display_name,
    }
    assert summary["subject"] == expected.subject
    other = "closed" if expected.state == "waiting" else "waiting"
    assert conversation_id not in {c["id"] for c in await mail.inbox(other)}

    body = await mail.conversation(conversation_id)
    [message] = body["messages"]
    assert message["direction"] == "in"
    assert message["kind"] == expected.kind
    assert message["provider"] == "imap"
    assert message["provider_message_id"] == received.message.provider_message_id
    assert message["subject"] == expected.subject
    assert message["text"].startswith(expected.text)
    assert expected.full_text in message["extra"]["full_text"]
    assert message["contact"]["address"] == expected.address
    assert [_attachment(a) for a in message["attachments"]] == list(expected.attachments)
    # The agent can open each one: the exact bytes that arrived (size and hash from ingest).
    stored = await mail.gw.runtime.store.get_message(message["id"])
    assert stored is not None
    for index, attachment in enumerate(stored.attachments):
        status, data, content_type = await mail.download(conversation_id, message["id"], index)
        assert status == 200, data[:200]
        assert len(data) == attachment.size
        assert hashlib.sha256(data).hexdigest() == attachment.sha256
        assert content_type.split(";")[0] == attachment.mime_type
    if expected.kind == "email":  # the inbox previews what the customer newly wrote
        assert body["preview"] == " ".join(message["text"].split())[:120]


def _attachment(data: dict[str, Any]) -> tuple[str | None, str, str, int]:
    return data["filename"], data["mime_type"], data["kind"], data["size"]


async def test_all_fixtures_in_one_mailbox_arrive_once_each(make_mail: MailFactory) -> None:
    """All of them in one mailbox, delivered while the gateway IDLEs: each stored exactly once."""
    mail = await make_mail()
    for path in fixture_files():
        await mail.deliver(path.read_bytes())
    received = await mail.wait_received(len(EXPECTED))
    assert len(received) == len(EXPECTED)
    ids = [e.message.provider_message_id for e in received if e.message is not None]
    assert len(set(ids)) == len(ids)
    kinds = sorted(e.message.kind for e in received if e.message is not None)
    assert kinds == sorted(x.kind for x in EXPECTED.values())
    waiting = await mail.inbox("waiting")
    assert len(waiting) == sum(1 for x in EXPECTED.values() if x.state == "waiting")
    # FIFO: the order the mail was delivered in
    people = [x.address for x in EXPECTED.values() if x.state == "waiting"]
    assert [c["contact"]["address"] for c in waiting] == people
