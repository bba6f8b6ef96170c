"""Mail crafted to make the parsers slow. Reading a mail runs under the interpreter lock, so
a header or body that takes a parser minutes stops every request of the node (webhooks,
agents' streams) for that long. Each case here took from seconds to hours before its fix
(quadratic regexes, the stdlib's header parsers, the reply parser on blank lines); the bound
below is a hundred times what it takes now, so it only fails on such a regression."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from plugins.email.detect import auto_reply_reason
from plugins.email.headers import READ_POLICY, msgid_list
from plugins.email.mime import latest_reply
from plugins.email.parse import ParsedEmail, parse_email

T = TypeVar("T")
BOUND = 20.0
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def finishes(work: Callable[[], T]) -> T:
    """Run `work` in a daemon thread; fail (instead of hanging the suite) past `BOUND`."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(work()), daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), f"still parsing after {BOUND} s"
    return box[0]


def mail(*headers: bytes, sender: bytes = b"Ana <ana@example.com>", body: bytes = b"hola") -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return (
        b"From: " + sender + b"\r\nTo: soporte@example.net\r\nSubject: Pedido\r\n"
        b"Message-ID: <m1@example.com>\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
        + head
        + b"\r\n"
        + body
        + b"\r\n"
    )


def parsed(raw: bytes) -> ParsedEmail:
    return finishes(lambda: parse_email(raw, channel="mail", now=NOW))


N = 200_000


@pytest.mark.parametrize(
    ("sender", "contact"),
    [
        # Past the stdlib's structured parser (minutes on 20 KB of quotes), read leniently.
        (b'"' * 10_000 + b" <ana@example.com>", "ana@example.com"),
        (b"," * 10_000 + b" ana@example.com", "ana@example.com"),
        # Longer than any real header: only its start is read, and there is no address in it.
        (b'"' * N + b" <ana@example.com>", None),
        (b"," * N + b" ana@example.com", None),
        (b"(" * N, None),  # comments nested deeper than the stdlib's recursion limit
        (b"<" * N, None),
        (b"a@" * N, None),
    ],
    ids=["quotes", "commas", "long-quotes", "long-commas", "parens", "angles", "at-signs"],
)
def test_an_absurd_from_header_is_read_in_bounded_time(sender: bytes, contact: str | None) -> None:
    result = parsed(mail(sender=sender))
    assert result.message.text == "hola"
    if contact is not None:
        assert result.message.contact.address == contact
    else:
        assert result.message.contact.address.endswith("@invalid")


def test_references_keep_their_last_ids_however_long() -> None:
    """The nearest ancestors are at the end: a header cut to size keeps those."""
    ids = b" ".join(b"<id%d@example.com>" % i for i in range(60_000))
    result = parsed(mail(b"References: " + ids, b"In-Reply-To: " + b"a" * N))
    assert result.message.thread_refs[-1] == "<id59999@example.com>"
    assert msgid_list(finishes(lambda: "x" * N + " " + "y" * N)) == []


@pytest.mark.parametrize(
    "header",
    [
        b"References: " + b"<a " * N,  # the stdlib's plain-text parser copies per word
        b'Content-Type: text/plain; name="' + b'"' * N,
        b'Content-Disposition: inline; filename="' + b";" * N,
        b"Content-Transfer-Encoding: " + b'"' * N,
        b"Subject: " + b"a " * N,
    ],
    ids=["references", "content-type", "content-disposition", "transfer-encoding", "subject"],
)
def test_absurd_headers_do_not_stall_the_parse(header: bytes) -> None:
    assert parsed(mail(header)).message.contact.address == "ana@example.com"


def test_a_reply_whose_subject_is_a_wall_of_blanks_is_checked_quickly() -> None:
    raw = mail(b"In-Reply-To: <ours@example.net>", b"Subject: Re:" + b" " * N + b"out of office")
    msg = finishes(lambda: __import__("email").message_from_bytes(raw, policy=READ_POLICY))
    assert finishes(lambda: auto_reply_reason(msg)) is None  # the wording is not at the start


@pytest.mark.parametrize(
    "line", ["\n", " \n", "\u00a0\n", "\r\n"], ids=["lf", "sp", "nbsp", "crlf"]
)
def test_a_body_of_blank_lines_is_read_quickly(line: str) -> None:
    """The reply parser read a run of blank lines again from each line: 8,000 took 15 s,
    20,000 took minutes, and it may see 100 KB of them."""
    body = "Hola, ¿mi pedido?" + line * 20_000 + "Ana"
    assert finishes(lambda: latest_reply(body)) == latest_reply("Hola, ¿mi pedido?\n\nAna")


def test_bounce_text_with_many_blank_lines_is_read_quickly() -> None:
    body = b"\r\n" * N + b"Message-ID: <lost@example.net>\r\n" + b"-" * N
    raw = mail(b"Content-Type: text/plain", sender=b"MAILER-DAEMON@example.net", body=body)
    assert parsed(raw).message is not None


@pytest.mark.parametrize(
    "body",
    ["On " * 200_000, "\n".join(["On " * 39] * 3_000), "Hola\n" + "On " * 8_000 + "\nAna"],
    ids=["one-line", "short-lines", "between-text"],
)
def test_a_body_the_reply_parser_reads_in_quadratic_time_is_read_quickly(body: str) -> None:
    """The reply parser tries each position of a line against the rest of it: one 24 KB
    line of "On On On ..." took it 22 s, 600 KB minutes, and a restart parsed the same mail
    again (an audit). Long lines go past it as placeholders and come back in the text."""
    text = finishes(lambda: latest_reply(body))
    assert (
        text.replace("\n", "").replace(" ", "")[:200]
        == body.replace("\n", "").replace(" ", "")[:200]
    )


def test_long_lines_come_back_whole_and_the_quote_still_goes() -> None:
    long_line = "quiero saber del pedido 1234 " * 10  # 290 characters, one line
    body = (
        f"Hola,\n\n{long_line}\n\nAna\n\n"
        "On Mon, Nov 23, 2026 at 10:15 AM Soporte <soporte@example.net> wrote:\n"
        "> Gracias por escribir\n"
    )
    assert latest_reply(body) == f"Hola,\n\n{long_line}\n\nAna"


def test_a_mime_tree_too_deep_to_parse_keeps_its_sender() -> None:
    """Thousands of nested multiparts defeat the parser: the mail is still stored, from its
    real sender, who can be answered (it used to come from a made-up `.invalid` contact, in
    a waiting conversation an agent could answer into the void)."""
    depth = 3_000
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n)
        for n in range(depth)
    )
    raw = (
        b"From: Ana <ana@example.com>\r\nTo: soporte@example.net\r\nSubject: Pedido\r\n"
        b"Message-ID: <deep@example.com>\r\nMIME-Version: 1.0\r\n" + opening + b"hola\r\n"
    )
    message = parsed(raw).message
    assert message.contact.address == "ana@example.com"
    assert message.subject == "Pedido" and message.wakes_conversation
    assert message.provider_message_id == "<deep@example.com>"
