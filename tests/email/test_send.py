"""Outbound: reply composition (threading, subject, injection) and SMTP against aiosmtpd."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from gateway.errors import PermanentChannelError, TransientChannelError
from gateway.model import Attachment, Contact, Conversation, Direction, Message, State
from plugins.email.compose import (
    MAX_REFERENCES,
    Thread,
    compose_reply,
    continue_thread,
    mailbox,
    references_for,
    reply_subject,
    thread_from_extra,
)
from plugins.email.parse import parse_email
from plugins.email.threads import remember
from tests.email.conftest import ADDRESS, MemoryKV, email_config
from tests.email.servers import RecordingHandler, SmtpServer, free_port, make_certificate

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def conversation(**changes: Any) -> Conversation:
    values: dict[str, Any] = {
        "id": "c_01JTEST",
        "channel": "support-mail",
        "channel_type": "email",
        "provider": "imap",
        "contact": Contact(address="ana@customer.example", display_name="Ana Souza"),
        "state": State.ACTIVE,
        "queue": "support",
        "created_at": NOW,
        "updated_at": NOW,
        "queued_at": NOW,
        "subject": "Where is my order?",
    }
    values.update(changes)
    return Conversation(**values)


def agent_message(text: str = "Hi Ana, it ships today.", **changes: Any) -> Message:
    values: dict[str, Any] = {
        "id": "m_01JTEST",
        "conversation_id": "c_01JTEST",
        "channel": "support-mail",
        "channel_type": "email",
        "provider": "imap",
        "direction": Direction.OUT,
        "kind": "text",
        "text": text,
        "sent_at": NOW,
        "received_at": NOW,
    }
    values.update(changes)
    return Message(**values)


def parsed(envelope: Any) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(envelope.content)
    assert isinstance(msg, EmailMessage)
    return msg


# -- composition (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Order 42", "Re: Order 42"),
        ("Re: Order 42", "Re: Order 42"),
        ("RE: Re: re: Order 42", "Re: Order 42"),
        ("AW: Re[2]: Order 42", "Re: Order 42"),
        ("Re:", "Re:"),
        ("Regarding order", "Re: Regarding order"),
        (None, "Re:"),
        ("  ", "Re:"),
    ],
)
def test_reply_subject_never_stacks(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


REPLY: dict[str, Any] = {
    "message_id": "<r1@gw.example.com>",
    "sender": mailbox(ADDRESS, "Support"),
    "recipient": mailbox("ana@customer.example", "Ana"),
    "text": "Hello",
    "now": NOW,
}


def test_reply_threading_headers() -> None:
    thread = Thread(in_reply_to="<c3@customer.example>", references=("<a1@x>", "<b2@y>"))
    msg = compose_reply(
        **{**REPLY, "text": "Hello\n\nSecond paragraph & more"},
        subject="Re: Re: Order 42",
        thread=thread,
    )
    assert msg["Message-ID"] == "<r1@gw.example.com>"
    assert msg["In-Reply-To"] == "<c3@customer.example>"
    assert str(msg["References"]).split() == ["<a1@x>", "<b2@y>", "<c3@customer.example>"]
    assert msg["Subject"] == "Re: Order 42"
    assert msg.get_content_type() == "multipart/alternative"
    untitled = compose_reply(**{**REPLY, "message_id": "<r2@gw.example.com>"}, thread=thread)
    assert untitled["Subject"] == "Re:"  # a reply to a mail that had no subject
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "Hello\n\nSecond paragraph & more"
    assert html is not None and "<p>Second paragraph &amp; more</p>" in html.get_content()


def test_references_are_trimmed_keeping_root_and_latest() -> None:
    refs = tuple(f"<r{n}@x>" for n in range(50))
    ids = references_for(Thread(in_reply_to="<last@x>", references=refs))
    assert len(ids) == MAX_REFERENCES
    assert ids[0] == "<r0@x>" and ids[-1] == "<last@x>"


def test_customer_values_cannot_inject_headers() -> None:
    evil_name = "Ana\r\nBcc: victim@example.com"
    evil_subject = "Order\r\nBcc: victim@example.com"
    thread = Thread(
        in_reply_to="<ok@customer.example>",
        references=("<a@x>\r\nBcc: victim@example.com", "<b@y>"),
    )
    msg = compose_reply(
        message_id="<r1@gw.example.com>",
        sender=mailbox(ADDRESS),
        recipient=mailbox("ana@customer.example", evil_name),
        text="hi",
        now=NOW,
        subject=evil_subject,
        thread=thread,
    )
    wire = msg.as_bytes(policy=policy.SMTP)
    headers = wire.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers
    assert msg["Subject"] == "Re: Order Bcc: victim@example.com"
    assert str(msg["References"]).split() == ["<b@y>", "<ok@customer.example>"]
    with pytest.raises(ValueError):
        mailbox("ana@customer.example\r\nBcc: victim@example.com")
    with pytest.raises(ValueError):
        mailbox("ana@customer.example, victim@example.com")


def test_email_package_refuses_raw_line_breaks() -> None:
    """Second line of defence: policy.default refuses CR/LF in any header value."""
    msg = EmailMessage()
    with pytest.raises(ValueError):
        msg["Subject"] = "Hi\r\nBcc: victim@example.com"
    with pytest.raises(ValueError):
        msg["To"] = Address("Ana\r\nBcc: x", addr_spec="ana@customer.example")


def test_thread_from_extra_accepts_lists_and_strings() -> None:
    thread = thread_from_extra({"in_reply_to": "<p@x>", "references": ["<a@x>", "<b@x> <c@x>"]})
    assert thread == Thread(in_reply_to="<p@x>", references=("<a@x>", "<b@x>", "<c@x>"))
    assert thread_from_extra({}) is None
    assert thread_from_extra({"references": "<a@x> <b@x>"}) == Thread(
        in_reply_to="<b@x>", references=("<a@x>", "<b@x>")
    )


def test_thread_from_extra_reads_the_cores_nested_block() -> None:
    """The core's `extra["thread"]` wins over flat keys; ids that are not Message-IDs go."""
    extra = {
        "thread": {
            "in_reply_to": "<c2@x>",
            "references": ["<c1@x>", "sha256:abcd", "<r1@gw.example.com>", "<c2@x>", "<c1@x>"],
            "subject": "Order 42",
        },
        "in_reply_to": "<flat@x>",
    }
    assert thread_from_extra(extra) == Thread(
        in_reply_to="<c2@x>",
        references=("<c1@x>", "<r1@gw.example.com>", "<c2@x>"),
        subject="Order 42",
    )
    # an empty nested block (a conversation with no mail ids yet) falls back to flat keys
    empty: dict[str, object] = {"thread": {"in_reply_to": None, "references": [], "subject": None}}
    assert thread_from_extra(empty) is None
    assert thread_from_extra({**empty, "in_reply_to": "<p@x>"}) == Thread(in_reply_to="<p@x>")


def test_continue_thread_puts_older_ids_first() -> None:
    # in one conversation: the customer's mail only named our reply; nothing older to add
    conversation = Thread(in_reply_to="<c2@x>", references=("<c1@x>", "<r1@gw>", "<c2@x>"))
    parent = Thread(in_reply_to="<c2@x>", references=("<r1@gw>",))
    assert continue_thread(conversation, parent) == conversation
    # a new conversation (the old one was closed): the parent's chain comes first
    fresh = Thread(in_reply_to="<c3@x>", references=("<c3@x>",))
    chain = Thread(in_reply_to="<c3@x>", references=("<c1@x>", "<r1@gw>", "<c2@x>", "<r2@gw>"))
    assert continue_thread(fresh, chain).references == (
        "<c1@x>",
        "<r1@gw>",
        "<c2@x>",
        "<r2@gw>",
        "<c3@x>",
    )
    # memory of another mail than the one answered is not used
    other = Thread(in_reply_to="<zz@x>", references=("<old@x>",))
    assert continue_thread(fresh, other) == fresh
    assert continue_thread(fresh, None) == fresh


# -- SMTP through the adapter -------------------------------------------------------------


def smtp_adapter(
    make_adapter: Any,
    smtp_server: SmtpServer,
    attachment_hosts: list[str] | None = None,
    **kwargs: Any,
) -> Any:
    imap = {"host": "127.0.0.1", "port": 1, "tls": "none", "username": "u", "password": "p"}
    config = email_config(
        imap,
        smtp_server.smtp_settings(),
        from_name="ACME Support",
        attachment_hosts=attachment_hosts or [],
    )
    return make_adapter(config, **kwargs)


async def test_send_threads_on_core_extra(make_adapter: Any, smtp_server: SmtpServer) -> None:
    adapter = smtp_adapter(make_adapter, smtp_server)
    message = agent_message(
        extra={"in_reply_to": "<c2@customer.example>", "references": ["<c1@customer.example>"]}
    )
    result = await adapter.send(conversation(), message)

    [envelope] = smtp_server.handler.messages
    sent = parsed(envelope)
    assert envelope.mail_from == ADDRESS
    assert envelope.rcpt_tos == ["ana@customer.example"]
    assert result.provider_message_id == sent["Message-ID"]
    # The message's own id: a send tried again (its answer lost after DATA) is the same mail.
    assert result.provider_message_id == f"<{message.id}@gw.example.com>"
    again = await adapter.send(conversation(), message)
    assert again.provider_message_id == result.provider_message_id
    assert parsed(smtp_server.handler.messages[-1])["Message-ID"] == sent["Message-ID"]
    assert sent["In-Reply-To"] == "<c2@customer.example>"
    assert str(sent["References"]).split() == ["<c1@customer.example>", "<c2@customer.example>"]
    assert sent["Subject"] == "Re: Where is my order?"
    assert str(sent["From"]) == f"ACME Support <{ADDRESS}>"
    assert str(sent["To"]) == "Ana Souza <ana@customer.example>"
    plain = sent.get_body(("plain",))
    assert plain is not None and plain.get_content().strip() == "Hi Ana, it ships today."


async def test_send_threads_on_the_cores_thread_block(
    make_adapter: Any, smtp_server: SmtpServer
) -> None:
    """What outbound.py passes: In-Reply-To the last inbound, References all ids, ours too."""
    adapter = smtp_adapter(make_adapter, smtp_server)
    thread = {
        "in_reply_to": "<c2@customer.example>",
        "references": ["<c1@customer.example>", "<r1@gw.example.com>", "<c2@customer.example>"],
        "subject": "Where is my order?",
    }
    await adapter.send(conversation(), agent_message(extra={"thread": thread}))
    sent = parsed(smtp_server.handler.messages[0])
    assert sent["In-Reply-To"] == "<c2@customer.example>"
    assert str(sent["References"]).split() == [
        "<c1@customer.example>",
        "<r1@gw.example.com>",
        "<c2@customer.example>",
    ]
    assert sent["Subject"] == "Re: Where is my order?"


async def test_send_threads_on_remembered_inbound(
    make_adapter: Any, smtp_server: SmtpServer, kv: MemoryKV
) -> None:
    """Without hints from the core, the reply answers the customer's newest stored mail."""
    raw = (
        b"From: Ana <ana@customer.example>\r\nTo: support@gw.example.com\r\n"
        b"Subject: Re: Where is my order?\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <c9@customer.example>\r\nIn-Reply-To: <r0@gw.example.com>\r\n"
        b"References: <c1@customer.example> <r0@gw.example.com>\r\n\r\nStill waiting\r\n"
    )
    await remember(kv, parse_email(raw, "support-mail", NOW))
    adapter = smtp_adapter(make_adapter, smtp_server)
    await adapter.send(conversation(), agent_message())
    sent = parsed(smtp_server.handler.messages[0])
    assert sent["In-Reply-To"] == "<c9@customer.example>"
    assert str(sent["References"]).split() == [
        "<c1@customer.example>",
        "<r0@gw.example.com>",
        "<c9@customer.example>",
    ]


async def test_first_outbound_has_no_reply_prefix(
    make_adapter: Any, smtp_server: SmtpServer
) -> None:
    adapter = smtp_adapter(make_adapter, smtp_server)
    await adapter.send(conversation(subject=None), agent_message(extra={"subject": "Welcome"}))
    sent = parsed(smtp_server.handler.messages[0])
    assert sent["Subject"] == "Welcome"
    assert sent["In-Reply-To"] is None and sent["References"] is None


@pytest.mark.parametrize(
    ("where", "reply", "error", "code"),
    [
        ("data", "451 4.3.0 Try again later", TransientChannelError, "451"),
        ("data", "550 5.7.1 Message rejected as spam", PermanentChannelError, "550"),
        ("rcpt", "450 4.2.1 Mailbox busy", TransientChannelError, "450"),
        ("rcpt", "550 5.1.1 No such user", PermanentChannelError, "550"),
    ],
)
async def test_smtp_errors_are_classified(
    make_adapter: Any,
    smtp_server: SmtpServer,
    where: str,
    reply: str,
    error: type[Exception],
    code: str,
) -> None:
    setattr(smtp_server.handler, f"{where}_reply", reply)
    adapter = smtp_adapter(make_adapter, smtp_server)
    with pytest.raises(error) as caught:
        await adapter.send(conversation(), agent_message())
    assert caught.value.provider_code == code  # type: ignore[attr-defined]
    assert reply.split(" ", 1)[1] in str(caught.value)


async def test_unreachable_smtp_is_transient(make_adapter: Any) -> None:
    imap = {"host": "127.0.0.1", "port": 1, "tls": "none", "username": "u", "password": "p"}
    smtp = {"host": "127.0.0.1", "port": free_port(), "tls": "none", "password": "hunter2"}
    adapter = make_adapter(email_config(imap, smtp))
    with pytest.raises(TransientChannelError) as caught:
        await adapter.send(conversation(), agent_message())
    assert "hunter2" not in str(caught.value)


async def test_invalid_recipient_is_permanent(make_adapter: Any, smtp_server: SmtpServer) -> None:
    adapter = smtp_adapter(make_adapter, smtp_server)
    bad = conversation(contact=Contact(address="ana@x.example\r\nBcc: v@example.com"))
    with pytest.raises(PermanentChannelError):
        await adapter.send(bad, agent_message())
    assert smtp_server.handler.messages == []


@pytest.fixture
async def file_server() -> AsyncIterator[int]:
    """A file server on 127.0.0.1 (a private address, as an internal file server would be):
    `/files/invoice.pdf`, `/moved` redirecting to it by the name `localhost`, and any
    `/named/NAME` (a short text file)."""
    app = web.Application()

    async def invoice(_request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.4 fake", content_type="application/pdf")

    port = free_port()

    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{port}/files/invoice.pdf")

    async def named(request: web.Request) -> web.Response:
        return web.Response(body=b"hello", content_type="text/plain")

    app.router.add_get("/files/invoice.pdf", invoice)
    app.router.add_get("/moved", moved)
    app.router.add_get("/named/{name}", named)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def test_attachments_from_a_private_address_need_the_host_listed(
    make_adapter: Any, smtp_server: SmtpServer, http: aiohttp.ClientSession, file_server: int
) -> None:
    """An agent's attachment URL must not make the gateway a way into its own network."""
    adapter = smtp_adapter(make_adapter, smtp_server, http=http)
    for url, reason in (
        (f"http://127.0.0.1:{file_server}/files/invoice.pdf", "private address 127.0.0.1"),
        (f"http://localhost:{file_server}/files/invoice.pdf", "localhost: it has no public"),
        ("http://[::1]:9/x.pdf", "private address ::1"),
        ("http://169.254.169.254/latest/meta-data/", "private address 169.254.169.254"),
        # IPv6 forms that carry a private IPv4 address, which `ipaddress` calls global.
        (f"http://[::127.0.0.1]:{file_server}/x.pdf", "private address ::7f00:1"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/", "private address 64:ff9b::a9fe:a9fe"),
        ("http://[2002:7f00:1::1]/x.pdf", "private address 2002:7f00:1::1"),
    ):
        attachment = Attachment(kind="document", url=url)
        with pytest.raises(PermanentChannelError) as caught:
            await adapter.send(conversation(), agent_message(attachments=(attachment,)))
        assert reason in str(caught.value), url
    # Listed, the host is fetched; a redirect from it to a host not listed is checked again.
    listed = smtp_adapter(make_adapter, smtp_server, ["127.0.0.1"], http=http)
    moved = Attachment(kind="document", url=f"http://127.0.0.1:{file_server}/moved")
    with pytest.raises(PermanentChannelError, match="localhost: it has no public address"):
        await listed.send(conversation(), agent_message(attachments=(moved,)))
    assert smtp_server.handler.messages == []


async def test_attachments_are_fetched_and_attached(
    make_adapter: Any, smtp_server: SmtpServer, http: aiohttp.ClientSession, file_server: int
) -> None:
    port = file_server
    adapter = smtp_adapter(make_adapter, smtp_server, ["127.0.0.1"], http=http)
    attachment = Attachment(kind="document", url=f"http://127.0.0.1:{port}/files/invoice.pdf")
    await adapter.send(conversation(), agent_message(attachments=(attachment,)))
    missing = Attachment(kind="document", url=f"http://127.0.0.1:{port}/nope.pdf")
    with pytest.raises(PermanentChannelError):
        await adapter.send(conversation(), agent_message(attachments=(missing,)))
    sent = parsed(smtp_server.handler.messages[0])
    [part] = list(sent.iter_attachments())
    assert part.get_filename() == "invoice.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == b"%PDF-1.4 fake"


@pytest.mark.parametrize(
    ("segment", "name"),
    [
        ("weird%20name%20%C3%A9.txt", "weird name é.txt"),
        ("a%2F..%2Fb.txt", "a_.._b.txt"),  # a decoded separator is not a path
        ("%0D%0ABcc%3A%20x.txt", "Bcc: x.txt"),  # nor a line break a header
    ],
)
async def test_an_attachment_named_by_its_url_has_the_decoded_name(
    segment: str,
    name: str,
    make_adapter: Any,
    smtp_server: SmtpServer,
    http: aiohttp.ClientSession,
    file_server: int,
) -> None:
    """Without a filename, the URL's last path segment names the file: percent-decoded (it
    reached the customer as `weird%20name%20%C3%A9.txt`), with no path or control
    characters left in it."""
    adapter = smtp_adapter(make_adapter, smtp_server, ["127.0.0.1"], http=http)
    url = f"http://127.0.0.1:{file_server}/named/{segment}"
    await adapter.send(
        conversation(), agent_message(attachments=(Attachment("document", url=url),))
    )
    [part] = list(parsed(smtp_server.handler.messages[0]).iter_attachments())
    assert part.get_filename() == name
    assert part.get_content() == "hello"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_smtp_tls_modes(mode: str, make_adapter: Any, tmp_path: Any) -> None:
    """STARTTLS and implicit TLS to an aiosmtpd server holding a self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    handler = RecordingHandler()
    port = free_port()
    if mode == "starttls":
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            tls_context=server_context,
            require_starttls=True,
        )
    else:
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, ssl_context=server_context
        )
    controller.start()
    try:
        imap = {"host": "127.0.0.1", "port": 1, "tls": "none", "username": "u", "password": "p"}
        smtp = {"host": "127.0.0.1", "port": port, "tls": mode, "timeout": "5s"}
        client_context = ssl.create_default_context(cafile=str(cert))
        adapter = make_adapter(email_config(imap, smtp), smtp_tls_context=client_context)
        await adapter.send(conversation(), agent_message())
        assert len(handler.messages) == 1

        untrusted = make_adapter(email_config(imap, smtp))
        with pytest.raises((TransientChannelError, PermanentChannelError)):
            await untrusted.send(conversation(), agent_message())
        assert len(handler.messages) == 1
    finally:
        controller.stop()


async def test_explicit_subject_is_kept_verbatim(
    make_adapter: Any, smtp_server: SmtpServer
) -> None:
    adapter = smtp_adapter(make_adapter, smtp_server)
    extra = {"in_reply_to": "<c2@customer.example>", "subject": "Your refund (case 7)"}
    await adapter.send(conversation(), agent_message(extra=extra))
    sent = parsed(smtp_server.handler.messages[0])
    assert sent["Subject"] == "Your refund (case 7)"
    assert sent["In-Reply-To"] == "<c2@customer.example>"


async def test_a_contact_without_an_address_is_never_mailed(
    make_adapter: Any, smtp_server: SmtpServer
) -> None:
    """A mail with no usable sender is kept under a made-up `.invalid` contact: a reply to it
    fails at once, naming why, and nothing reaches the relay (it showed `sent` before)."""
    adapter = smtp_adapter(make_adapter, smtp_server)
    nobody = conversation(contact=Contact(address="unknown-0123456789abcdef@invalid"))
    with pytest.raises(PermanentChannelError, match="no address to answer"):
        await adapter.send(nobody, agent_message())
    assert smtp_server.handler.messages == []


async def test_a_relay_that_takes_no_mail_degrades_the_channel_until_one_goes(
    make_adapter: Any, smtp_server: SmtpServer
) -> None:
    """/readyz and gateway_channel_up saw only IMAP: with the relay down or refusing our login,
    the channel looked healthy while every reply failed (an audit)."""
    adapter = smtp_adapter(make_adapter, smtp_server)
    smtp_server.handler.data_reply = "451 4.3.0 try again later"
    with pytest.raises(TransientChannelError):
        await adapter.send(conversation(), agent_message())
    health = adapter.health()
    assert not health.ok and "SMTP: smtp 451" in health.detail
    smtp_server.handler.data_reply = "550 5.1.1 no such user"  # about the message: no verdict
    with pytest.raises(PermanentChannelError):
        await adapter.send(conversation(), agent_message())
    assert "SMTP: smtp 451" in adapter.health().detail
    smtp_server.handler.data_reply = None
    await adapter.send(conversation(), agent_message())
    assert "SMTP" not in adapter.health().detail
