"""Reply threading facts: what a reply answers and what it references."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.model import Direction, Message
from gateway.outbound import thread_headers

T = datetime(2026, 11, 25, tzinfo=UTC)


def msg(pid: str, direction: Direction, kind: str = "email", subject: str | None = None) -> Message:
    return Message(
        id=f"m_{pid}",
        conversation_id="c",
        channel="mail",
        channel_type="email",
        provider="imap",
        direction=direction,
        kind=kind,
        text="x",
        sent_at=T,
        received_at=T,
        provider_message_id=pid,
        subject=subject,
    )


def test_reply_answers_the_customer_not_a_bounce_or_auto_reply() -> None:
    messages = [
        msg("<c1@x>", Direction.IN, subject="Invoice"),
        msg("<r1@us>", Direction.OUT),
        msg("<bounce@daemon>", Direction.IN, kind="bounce"),
        msg("<away@x>", Direction.IN, kind="auto_reply"),
    ]
    facts = thread_headers(messages)
    assert facts["in_reply_to"] == "<c1@x>"
    assert facts["references"] == ["<c1@x>", "<r1@us>"]
    assert facts["subject"] == "Invoice"


def test_no_inbound_yet() -> None:
    assert thread_headers([])["in_reply_to"] is None
