"""parse_email on real mail (shared/fixtures/email) and on crafted edge cases."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import DeliveryState, to_dict
from plugins.email.headers import _parsed_header
from plugins.email.mime import decode_bytes
from plugins.email.parse import content_key, parse_email
from tests.email.conftest import FIXTURES, fixture_files

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def parse(name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return parse_email((FIXTURES / name).read_bytes(), "support-mail", NOW, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
def test_every_fixture_parses_to_json_safe_message(path: Path) -> None:
    raw = path.read_bytes()
    parsed = parse_email(raw, "support-mail", NOW)
    message = parsed.message
    assert message.channel_type == "email" and message.provider == "imap"
    assert message.raw.encode("latin-1") == raw
    assert message.extra["raw_encoding"] == "latin-1"
    orjson.dumps(to_dict(message))
    for status in parsed.statuses:
        orjson.dumps(to_dict(status))


def test_header_cache_shares_nothing_between_messages() -> None:
    """Parsing reuses parsed headers across mails (READ_POLICY): results must not depend on
    what was parsed before, or in which order."""
    paths = fixture_files()

    def parse_all(order: list[Path]) -> dict[str, bytes]:
        return {
            p.name: orjson.dumps(to_dict(parse_email(p.read_bytes(), "support-mail", NOW).message))
            for p in order
        }

    _parsed_header.cache_clear()
    forward = parse_all(paths)
    _parsed_header.cache_clear()
    backward = parse_all(list(reversed(paths)))
    assert forward == backward == parse_all(paths)  # the last one with a warm cache


@pytest.mark.parametrize(
    "name", ["talon_gmail_reply_alternative.eml", "talon_yahoo_reply_in_reply_to.eml"]
)
def test_quoted_history_is_stripped(name: str) -> None:
    message = parse(name).message
    assert message.text == "Hello"
    assert (
        "wrote:" in message.extra["full_text"] or "Original Message" in message.extra["full_text"]
    )
    assert message.kind == "email" and message.wakes_conversation


def test_gmail_alternative_keeps_html() -> None:
    message = parse("talon_gmail_reply_alternative.eml").message
    assert 'class="gmail_quote"' in message.extra["html"]
    assert message.subject == "Re: Test"
    assert message.contact.address == "xxx@gmail.com"
    assert message.contact.display_name == "Megan One"
    assert message.sent_at == datetime(2012, 4, 2, 16, 21, 52, tzinfo=UTC)


def test_threading_headers_become_thread_refs() -> None:
    yahoo = parse("talon_yahoo_reply_in_reply_to.eml").message
    assert yahoo.reply_to == "<1333374262.7063.15.camel@mg5>"
    assert yahoo.thread_refs == ("<1333374262.7063.15.camel@mg5>",)
    refs = parse("chatwoot_references_malformed_multipart.eml").message
    assert refs.thread_refs == (
        "<4e6e35f5a38b4_479f13bb90078178@small-app-01.mail>",
        "<test-in-reply-to>",
    )
    assert refs.provider_message_id == "<0CB459E0-0336-41DA-BC88-E6E28C697DDBF@chatwoot.com>"


def test_malformed_multipart_is_stored_as_best_it_can() -> None:
    message = parse("chatwoot_references_malformed_multipart.eml").message
    assert message.text == "References Email"
    assert "CloseBoundaryNotFoundDefect" in message.extra["defects"]
    assert message.extra["to"] == []


NO_BOUNDARY = (
    b"From: Ana <ana@customer.example>\r\nTo: support@gw.example.com\r\n"
    b"Subject: Order 42\r\nMessage-ID: <nb1@customer.example>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed\r\n\r\n"  # no boundary parameter
    b"Hello, my order 42 never came.\r\nAna\r\n"
)


def test_a_multipart_without_a_boundary_is_read_as_its_text() -> None:
    """The parser cannot split a multipart that names no boundary: its payload is the body
    the sender wrote. It was stored with no text and the body as an attachment of type
    multipart/mixed."""
    message = parse_email(NO_BOUNDARY, "support-mail", NOW).message
    assert message.text == "Hello, my order 42 never came.\nAna"
    assert message.attachments == ()
    assert "NoBoundaryInMultipartDefect" in message.extra["defects"]


@pytest.mark.parametrize(
    ("content_type", "defect"),
    [
        (b'multipart/alternative; boundary=""', "StartBoundaryNotFoundDefect"),
        (b'multipart/mixed; boundary="XYZ"', "StartBoundaryNotFoundDefect"),  # never appears
    ],
)
def test_a_multipart_whose_boundary_never_starts_a_part_is_read_as_its_text(
    content_type: bytes, defect: str
) -> None:
    """Re-audit: an empty boundary, or one the body never uses, hid the body as a nameless
    attachment, as a missing one did."""
    raw = NO_BOUNDARY.replace(b"multipart/mixed\r\n\r\n", content_type + b"\r\n\r\n")
    message = parse_email(raw, "support-mail", NOW).message
    assert message.text == "Hello, my order 42 never came.\nAna"
    assert message.attachments == ()
    assert defect in message.extra["defects"]


def test_an_unsplit_multipart_of_html_is_read_as_text_not_tags() -> None:
    raw = NO_BOUNDARY.replace(
        b"Hello, my order 42 never came.\r\nAna\r\n",
        b"<html><body><p>Hello, my <b>order 42</b> never came.</p></body></html>\r\n",
    )
    message = parse_email(raw, "support-mail", NOW).message
    assert message.text == "Hello, my order 42 never came."


def test_a_nested_multipart_without_a_boundary_is_noted_and_read() -> None:
    raw = (
        b"From: Ana <ana@customer.example>\r\nSubject: Order 42\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\n'
        b"Content-Type: multipart/alternative\r\n\r\nWhere is order 42?\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="invoice.pdf"\r\n\r\n%PDF-1\r\n'
        b"--outer--\r\n"
    )
    message = parse_email(raw, "support-mail", NOW).message
    assert message.text == "Where is order 42?"
    assert [a.filename for a in message.attachments] == ["invoice.pdf"]
    assert "NoBoundaryInMultipartDefect" in message.extra["defects"]


def test_mislabelled_gb2312_body_falls_back_to_utf8() -> None:
    message = parse("mailparser_gb2312_8bit_rfc2047.eml").message
    assert message.text is not None and message.text.startswith("你好\uff01我公司可代开")
    assert message.subject == "代开各地增值税发票"
    assert message.contact.display_name == "张先生"
    raw = (FIXTURES / "mailparser_gb2312_8bit_rfc2047.eml").read_bytes()
    assert message.provider_message_id == content_key(raw)


def test_rfc2047_arabic_auto_reply_does_not_wake() -> None:
    message = parse("chatwoot_non_utf_encoded_autoreply.eml").message
    assert message.kind == "auto_reply"
    assert message.wakes_conversation is False
    assert message.contact.display_name == "متجر سوق نت"
    assert message.subject == "أهلين عميلنا الكريم"
    assert message.text is not None and message.text.startswith("أنظروا")
    # the duplicated, comma-separated In-Reply-To collapses to one id
    assert message.thread_refs == ("<4e6e35f5a38b4_479f13bb90078178@small-app-01.mail>",)
    assert message.extra["to"] == ["reply+6bdc3f4d-0bec-4515-a284-5d916fdde489@example.com"]


def test_mixed_alternative_with_inline_text_attachment() -> None:
    message = parse("mailparser_mixed_alternative_qp_iso8859.eml").message
    assert message.text == (
        "I am sending you the bills of the goods we delivered to you in the attachment"
    )
    [notice] = message.attachments
    assert notice.filename == "message.txt"
    assert notice.mime_type == "text/plain"
    assert notice.kind == "document"
    assert notice.size and notice.size > 300


def test_gif_attachments_metadata_and_oversize_flag() -> None:
    message = parse("cpython_msg_07_multipart_gif_attachments.eml").message
    [gif] = message.attachments
    assert (gif.kind, gif.mime_type, gif.filename) == ("image", "image/gif", "dingusfish.gif")
    assert gif.media_id == "part:2" and gif.size and gif.sha256
    assert message.provider_message_id.startswith("sha256:")

    small = parse("cpython_msg_07_multipart_gif_attachments.eml", max_attachment_bytes=1000)
    [big] = small.message.attachments
    assert big.size == gif.size and big.media_id is None
    assert small.message.extra["oversize_attachments"] == ["2"]
    assert "R0lGODdhAAEAAfAAAP" not in small.message.raw  # content not kept
    assert "dingusfish.gif" in small.message.raw


@pytest.mark.parametrize(
    ("name", "original", "code", "diagnostic"),
    [
        (
            "flanker_bounce_mailbox_full_verp.eml",
            "<4E326A95.3010907@example.com>",
            "5.2.2",
            "552 5.2.2 E4.12 user MAILBOX FULL",
        ),
        (
            "cpython_msg_16_dsn_disk_quota.eml",
            "<002001c144a6$8752e060$56104586@oxy.edu>",
            "5.0.0",
            "recipient reached disk quota",
        ),
        (
            "chatwoot_bounced_gmail_dsn.eml",
            "<conversation/93775311-9416-4428-964b-862001f8a8b2/messages/27855337@gmail.com>",
            "5.1.1",
            "550 5.1.1 The email account that you tried to reach does not exist.",
        ),
    ],
)
def test_bounce_reports_failed_status_of_original(
    name: str, original: str, code: str, diagnostic: str
) -> None:
    parsed = parse(name)
    assert parsed.message.kind == "bounce"
    assert parsed.message.wakes_conversation is False
    assert original in parsed.message.thread_refs
    [status] = parsed.statuses
    assert status.provider_message_id == original
    assert status.status == DeliveryState.FAILED
    assert status.error_code == code
    assert status.error_message is not None and status.error_message.startswith(diagnostic)
    assert status.channel == "support-mail"


def test_verp_and_recipient_of_bounce() -> None:
    bounce = parse("flanker_bounce_mailbox_full_verp.eml").message.extra["bounce"]
    assert bounce["recipient"] == "user@aol.com"
    assert bounce["verp_recipient"] == "user@aol.com"
    assert parse("flanker_bounce_mailbox_full_verp.eml").message.contact.display_name == (
        "Mail Delivery System"
    )
    gmail = parse("chatwoot_bounced_gmail_dsn.eml").message.extra["bounce"]
    assert gmail["recipient"] == "alex.jones@fictionalcorp.com"


REPLYING = "<m_01J0000000000000000000000@gw.example.com>"


def _mail(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Ana <ana@customer.example>")
    msg["To"] = "support@gw.example.com"
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content("Hi, where is my order?\n")
    return msg


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto_Submitted": "auto-generated"}, "auto-submitted: auto-generated"),
        ({"X_Autorespond": "yes"}, "x-autorespond"),
        ({"Precedence": "junk"}, "precedence: junk"),
        ({"Precedence": "auto_reply"}, "precedence: auto_reply"),
        ({"Subject": "Out of Office: Re: order 42", "In_Reply_To": REPLYING}, "subject"),
        ({"Subject": "Automatic reply: order 42", "References": REPLYING}, "subject"),
        ({"Subject": "Abwesenheitsnotiz", "In_Reply_To": REPLYING}, "subject"),
    ],
)
def test_auto_reply_markers(headers: dict[str, str], reason: str) -> None:
    message = parse_email(_mail(**headers).as_bytes(), "c", NOW).message
    assert message.kind == "auto_reply" and not message.wakes_conversation
    assert message.extra["auto_reply"] == reason


def test_human_mail_wakes_and_auto_submitted_no_is_human() -> None:
    for headers in ({}, {"Auto_Submitted": "no"}, {"Subject": "Question about my vacation"}):
        message = parse_email(_mail(**headers).as_bytes(), "c", NOW).message
        assert message.kind == "email" and message.wakes_conversation


@pytest.mark.parametrize(
    "subject",
    [
        "Out of office hours: can I call you?",
        "Absence of refund after 3 weeks",
        "Automatic response from your app is wrong",
        "Vacation notice: will your store be open?",
    ],
)
def test_a_customers_first_mail_is_never_hidden_by_its_subject(subject: str) -> None:
    """Auto-replies answer a mail (In-Reply-To/References); a new mail with such words is a
    customer writing, and must reach the queue."""
    message = parse_email(_mail(Subject=subject).as_bytes(), "c", NOW).message
    assert message.kind == "email" and message.wakes_conversation


@pytest.mark.parametrize(
    ("sender", "subject"),
    [
        ("postmaster@mx2.example", "Message not delivered"),
        ("mailer-daemon@mx3.example", "Mail could not be delivered"),
        ("MAILER-DAEMON@mx4.example", "About your message"),
    ],
)
def test_plain_text_bounces_with_a_null_return_path_do_not_wake(sender: str, subject: str) -> None:
    mail = _mail(From=sender, Subject=subject, Return_Path="<>")
    mail.set_content(
        "I wasn't able to deliver your message to ana@customer.example.\n550 5.1.1 user unknown\n"
    )
    message = parse_email(mail.as_bytes(), "c", NOW).message
    assert message.kind == "bounce" and not message.wakes_conversation


def test_a_person_at_postmaster_with_a_return_path_is_a_person() -> None:
    mail = _mail(From="postmaster@partner.example", Subject="About your message")
    message = parse_email(mail.as_bytes(), "c", NOW).message
    assert message.kind == "email" and message.wakes_conversation


def test_mail_from_our_own_address_does_not_wake() -> None:
    raw = _mail(From="Support <Support@gw.example.com>").as_bytes()
    message = parse_email(raw, "c", NOW, own_address="support@gw.example.com").message
    assert not message.wakes_conversation
    assert message.extra["auto_reply"] == "own-address"


def test_encoded_line_breaks_in_headers_are_flattened() -> None:
    """RFC 2047 can smuggle CR/LF into a subject or name; we never keep them."""
    raw = (
        b"From: =?utf-8?q?Ana=0D=0ABcc:_x@evil.example?= <ana@customer.example>\r\n"
        b"Subject: =?utf-8?q?Hi=0D=0ABcc:_evil@example.com?=\r\n"
        b"Message-ID: <a1@customer.example>\r\n\r\nbody\r\n"
    )
    message = parse_email(raw, "c", NOW).message
    assert message.subject == "Hi Bcc: evil@example.com"
    assert message.contact.display_name is not None
    assert "\n" not in message.contact.display_name and "\r" not in message.contact.display_name


def test_html_only_mail_becomes_readable_text() -> None:
    msg = EmailMessage()
    msg["From"] = "ana@customer.example"
    msg["Message-ID"] = "<h1@customer.example>"
    msg.set_content(
        "<html><body><p>Hello <b>team</b>,</p><p>my order <a href='https://shop/1'>#1</a>"
        " is late.</p><img src='x.png'></body></html>",
        subtype="html",
    )
    message = parse_email(msg.as_bytes(), "c", NOW).message
    assert message.text is not None
    assert "Hello team," in message.text and "is late." in message.text
    assert "<b>" not in message.text
    assert message.extra["html"].startswith("<html>")


@pytest.mark.parametrize("subtype", ["html", "plain"])
def test_a_file_sent_inline_is_an_attachment_not_the_body(subtype: str) -> None:
    """Apple Mail sends files inline: a text part with a file name is a file, also when no
    other part of its type would be the body."""
    msg = EmailMessage()
    msg["From"] = "ana@customer.example"
    msg["Message-ID"] = "<inline@customer.example>"
    msg.set_content("The report is attached.")
    msg.add_attachment(
        "<html><body>Q3 figures</body></html>" if subtype == "html" else "Q3 figures",
        subtype=subtype,
        filename=f"report.{subtype[:4]}",
        disposition="inline",
    )
    message = parse_email(msg.as_bytes(), "c", NOW).message
    assert message.text == "The report is attached."
    assert "html" not in message.extra
    [report] = message.attachments
    assert (report.filename, report.mime_type) == (f"report.{subtype[:4]}", f"text/{subtype}")


def test_a_single_part_mail_with_a_file_name_is_still_read() -> None:
    """The root part is the body even when a client names it (some send a bare .txt)."""
    msg = EmailMessage()
    msg["From"] = "ana@customer.example"
    msg["Message-ID"] = "<named@customer.example>"
    msg.set_content("Just this text.", disposition="inline", filename="note.txt")
    message = parse_email(msg.as_bytes(), "c", NOW).message
    assert message.text == "Just this text."
    assert message.attachments == ()


def test_undeclared_8bit_latin1_body_never_crashes() -> None:
    raw = (
        b"From: jose@customer.example\r\nSubject: pedido\r\n"
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Ol\xe1, n\xe3o recebi o pedido.\r\n"
    )
    message = parse_email(raw, "c", NOW).message
    assert message.text == "Olá, não recebi o pedido."


def test_unknown_charset_and_broken_base64() -> None:
    raw = (
        b"From: a@customer.example\r\nContent-Type: text/plain; charset=x-klingon\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("café".encode())[:-1]
        + b"\r\n"
    )
    message = parse_email(raw, "c", NOW).message
    assert message.text is not None


def test_missing_or_future_date_uses_now() -> None:
    no_date = parse_email(b"From: a@customer.example\r\n\r\nhi\r\n", "c", NOW).message
    assert no_date.sent_at == NOW
    future = _mail(Date="Mon, 01 Jan 2035 00:00:00 +0000")
    message = parse_email(future.as_bytes(), "c", NOW).message
    assert message.sent_at == NOW
    assert message.extra["date_header"].startswith("Mon, 01 Jan 2035")


def test_message_id_is_normalized_and_hash_is_stable() -> None:
    raw = b"From: a@customer.example\r\nMessage-ID:   <Abc@X.example>  \r\n\r\nhi\r\n"
    assert parse_email(raw, "c", NOW).message.provider_message_id == "<Abc@X.example>"
    raw2 = b"From: a@customer.example\r\n\r\nhi\r\n"
    first = parse_email(raw2, "c", NOW).message.provider_message_id
    assert first == parse_email(raw2, "c", NOW).message.provider_message_id


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    raw = b"From: fuzz@customer.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + data
    message = parse_email(raw, "c", NOW).message
    orjson.dumps(to_dict(message))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=60))
def test_arbitrary_headers_never_crash(subject: str, name: str) -> None:
    raw = f"From: {name} <x@customer.example>\r\nSubject: {subject}\r\n\r\nhi\r\n".encode(
        "utf-8", "surrogatepass"
    )
    message = parse_email(raw, "c", NOW).message
    orjson.dumps(to_dict(message))
    assert message.subject is None or "\n" not in message.subject


def test_a_parser_crash_still_yields_a_storable_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message the parser cannot handle must not block the mailbox: it is kept raw."""
    import plugins.email.parse as parse_module

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(parse_module, "sender", explode)
    raw = b"From: a@customer.example\r\n\r\nhi\r\n"
    message = parse_email(raw, "c", NOW).message
    assert message.kind == "unsupported"
    assert message.extra["parse_error"] == "RuntimeError"
    assert message.raw == raw.decode("latin-1")
    assert message.provider_message_id == content_key(raw)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "Where is my order 42?\n\nBest regards,\nAna\n\n-- \nAna Souza\nACME Corp\n",
            "Where is my order 42?",
        ),
        (
            "Hola, ¿dónde está mi pedido?\n\nEl lun, 2 abr 2026 a las 10:00, Soporte "
            "(<s@x.com>) escribió:\n> texto viejo\n>\n> más\n",
            "Hola, ¿dónde está mi pedido?",
        ),
        ("> q1\nanswer 1\n> q2\nanswer 2\n", "> q1\nanswer 1\n> q2\nanswer 2"),
    ],
)
def test_new_text_without_signature_or_bottom_quote(body: str, expected: str) -> None:
    msg = _mail()
    msg["In-Reply-To"] = "<ours-1@gw.example.com>"  # a reply: history and signature go
    msg.set_content(body)
    assert parse_email(msg.as_bytes(), "c", NOW).message.text == expected
    msg["Subject"] = "Re: Pedido 42"
    del msg["In-Reply-To"]  # a reply by its subject alone, too
    assert parse_email(msg.as_bytes(), "c", NOW).message.text == expected


@pytest.mark.parametrize(
    "body",
    [
        "Hi, my complaint:\n\nOn Monday my colleague wrote:\nThe package was damaged.\n\n"
        "Please refund.",
        "Question about invoice 55:\n--\nthe amount is wrong, it should be 40 EUR not 400 EUR.",
        "Can you cancel order 99?\n\nThanks,\nJohn\n\nP.S. also order 100 please",
    ],
)
def test_a_first_mail_is_kept_whole(body: str) -> None:
    """The reply heuristics cut real text out of a first mail (an audit): a line that reads
    like an attribution, a "--" before the point of the mail. A first mail is kept whole."""
    msg = _mail()
    msg.set_content(body)
    assert parse_email(msg.as_bytes(), "c", NOW).message.text == body


@pytest.mark.parametrize("sender", [None, "not an address at all", "Undisclosed recipients:;"])
def test_a_mail_without_a_usable_sender_is_kept_apart_and_wakes_nobody(sender: str | None) -> None:
    """Nobody can be answered, so no agent is asked to; and two such mails from unrelated
    people never share a contact (or a reply would thread them together)."""
    first, second = EmailMessage(), EmailMessage()
    for n, mail in enumerate((first, second)):
        if sender is not None:
            mail["From"] = sender
        mail["To"] = "support@gw.example.com"
        mail["Message-ID"] = f"<nosender-{n}@example.com>"
        mail.set_content("hello")
    parsed = [parse_email(m.as_bytes(), "c", NOW).message for m in (first, second)]
    assert all(not m.wakes_conversation and m.extra["no_sender"] for m in parsed)
    assert all(m.contact.address.endswith("@invalid") for m in parsed)
    assert parsed[0].contact.address != parsed[1].contact.address


@pytest.mark.parametrize(
    "body",
    [
        "---------- Forwarded message ---------\nFrom: Bob <bob@x.example>\n"
        "Subject: order 42\n\nMy order 42 never came.\n",
        "FYI\n\n---------- Forwarded message ---------\nFrom: Bob <bob@x.example>\n\n"
        "My order 42 never came.\n",
        "Begin forwarded message:\n\nFrom: Bob <bob@x.example>\n\nMy order 42 never came.\n",
    ],
)
def test_a_forward_keeps_what_it_forwards(body: str) -> None:
    """A forward's content is the message, not quoted history to drop."""
    mail = _mail(Subject="Fwd: order 42")
    mail.set_content(body)
    message = parse_email(mail.as_bytes(), "c", NOW).message
    assert message.text is not None and "My order 42 never came." in message.text


def test_a_reply_above_outlook_history_keeps_only_the_reply() -> None:
    mail = _mail(Subject="RE: order 42")
    mail.set_content("See my answer\n\n-----Original Message-----\nFrom: a\n\nold text\n")
    assert parse_email(mail.as_bytes(), "c", NOW).message.text == "See my answer"


def test_a_huge_body_is_cut_on_the_message_and_says_so() -> None:
    """The raw mail is kept whole; the text fields that travel in every event are bounded."""
    from plugins.email.parse import MAX_TEXT_CHARS

    mail = _mail(Subject="long")
    mail.set_content("x" * (MAX_TEXT_CHARS + 5000) + "\n")
    message = parse_email(mail.as_bytes(), "c", NOW).message
    assert message.text is not None and len(message.text) <= MAX_TEXT_CHARS
    assert len(message.extra["full_text"]) == MAX_TEXT_CHARS
    assert "full_text" in message.extra["truncated"]
    assert len(message.raw) > MAX_TEXT_CHARS


def _form_mail(n: int, reply_to: str, sender: str = "Website <noreply@shop.example>") -> bytes:
    mail = _mail(From=sender, Reply_To=reply_to, Message_ID=f"<form-{n}@shop.example>")
    return mail.as_bytes()


def test_contact_form_mail_belongs_to_the_visitor_in_reply_to() -> None:
    """A website's form sends every visitor's request from one address of its own: read From
    and all of them become one contact whose replies go to a no-reply address."""
    first = parse_email(_form_mail(1, "Ana Souza <ana@customer.example>"), "c", NOW).message
    second = parse_email(_form_mail(2, "bob@other.example"), "c", NOW).message
    assert (first.contact.address, first.contact.display_name) == (
        "ana@customer.example",
        "Ana Souza",
    )
    # no name of its own, and From is the form's (another domain): no name, not "Website"
    assert (second.contact.address, second.contact.display_name) == ("bob@other.example", None)
    assert first.wakes_conversation and second.wakes_conversation


def test_reply_to_without_a_name_keeps_the_authors_name_on_the_same_domain() -> None:
    raw = _form_mail(3, "ana.home@customer.example", sender="Ana Souza <ana@customer.example>")
    contact = parse_email(raw, "c", NOW).message.contact
    assert (contact.address, contact.display_name) == ("ana.home@customer.example", "Ana Souza")


def test_a_reply_to_naming_our_own_address_is_ignored() -> None:
    """Some clients point Reply-To at the address they write to: the author stays the
    contact, and the mail is not mistaken for our own."""
    raw = _form_mail(4, "Support <support@gw.example.com>", sender="Ana <ana@customer.example>")
    message = parse_email(raw, "c", NOW, own_address="support@gw.example.com").message
    assert message.contact.address == "ana@customer.example"
    assert message.wakes_conversation


def test_a_form_sending_from_our_own_address_still_reaches_an_agent() -> None:
    """Forms are often set up to send from the support address itself, with the visitor in
    Reply-To: that is a customer's request, not our own mail coming back."""
    raw = _form_mail(5, "Ana <ana@customer.example>", sender="Support <support@gw.example.com>")
    message = parse_email(raw, "c", NOW, own_address="support@gw.example.com").message
    assert message.contact.address == "ana@customer.example"
    assert message.kind == "email" and message.wakes_conversation


MAIL = (
    b"From: Ana <ana@customer.example>\r\nTo: support@example.com\r\nSubject: Order\r\n"
    b" 42 is late\r\nDate: Wed, 25 Nov 2026 07:00:00 +0000\r\n\r\nWhere is it?\r\n"
)


def test_the_key_of_a_mail_without_message_id_is_its_content_not_its_trace() -> None:
    """Two deliveries of one mail differ in trace headers and line endings, not content."""
    delivered = (
        b"Return-Path: <ana@customer.example>\r\nReceived: from mx2 by imap; now\r\n"
        b"Delivered-To: other@example.com\r\nX-Spam-Score: 0.1\r\n" + MAIL
    )
    assert content_key(delivered) == content_key(MAIL)
    assert content_key(MAIL.replace(b"\r\n", b"\n")) == content_key(MAIL)
    assert content_key(MAIL.replace(b"\r\n 42", b" 42")) == content_key(MAIL)  # unfolded
    assert content_key(MAIL.replace(b"Where is it?", b"Where is it now?")) != content_key(MAIL)
    assert content_key(MAIL.replace(b"Order", b"Invoice")) != content_key(MAIL)
    assert content_key(MAIL.replace(b"07:00:00", b"07:00:01")) != content_key(MAIL)
    assert content_key(b"not a mail at all") != content_key(b"")


def test_a_stray_bad_byte_in_utf8_text_spoils_only_itself() -> None:
    """Hostile-content audit: one invalid byte (Dovecot turns a NUL into 0x80) made the whole
    body be read as Windows-1252, every accent and emoji turned to mojibake."""
    raw = (
        b"From: moji@customer.example\r\nSubject: fatura\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Ol\xc3\xa1, preciso de ajuda com a fatura\xc3\xa7\xc3\xa3o \xf0\x9f\x98\x80 \x80 fim\r\n"
    )
    message = parse_email(raw, "c", NOW).message
    assert message.text == "Olá, preciso de ajuda com a faturação 😀 \ufffd fim"


def test_windows_1252_mislabelled_as_utf8_is_still_read_as_such() -> None:
    raw = (
        b"From: jose@customer.example\r\nSubject: pedido\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Ol\xe1, n\xe3o recebi o pedido \x96 obrigado.\r\n"
    )
    message = parse_email(raw, "c", NOW).message
    assert message.text == "Olá, não recebi o pedido \u2013 obrigado."


@pytest.mark.parametrize(
    ("data", "declared", "text"),
    [
        ("emoji 😀".encode()[:-1], "utf-8", "emoji \ufffd"),  # cut short by a relay
        ("emoji 😀".encode()[:-2], None, "emoji \ufffd"),
        ("naïve Â©".encode("cp1252"), None, "naïve Â©"),  # one good pair by chance
        (b"caf\xe9", "utf-8", "caf\u00e9"),  # one byte: Windows-1252's letter, not a stump
        (b"\xc3", None, "\u00c3"),
    ],
)
def test_utf8_cut_short_and_windows_1252_by_chance_are_told_apart(
    data: bytes, declared: str | None, text: str
) -> None:
    """Audit: a UTF-8 body whose last emoji a relay cut short became mojibake, and Windows-1252
    text with one valid UTF-8 pair in it (`Â©`) lost a character."""
    assert decode_bytes(data, declared) == text
