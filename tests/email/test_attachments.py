"""Reading an inbound mail's attachment back from the stored message (the agent's download).

The end-to-end path (IMAP -> store -> agent API) is in tests/email_e2e/test_e2e_fixtures.py,
for every fixture's attachments; these are the refusals, which must be clear, not a 500.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import PermanentChannelError
from gateway.ingest import to_message
from gateway.lifecycle import ChannelPolicy, open_conversation
from gateway.model import Message
from plugins.email.attachments import attachment_content
from plugins.email.parse import parse_email

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "email"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def stored(name: str, **parse: int) -> Message:
    inbound = parse_email((FIXTURES / name).read_bytes(), "mail", NOW, **parse).message
    conversation = open_conversation("c_1", inbound, "support", NOW, ChannelPolicy()).conversation
    return to_message(inbound, "m_1", conversation, received_at=NOW)


def test_the_gif_comes_back_byte_for_byte() -> None:
    message = stored("cpython_msg_07_multipart_gif_attachments.eml")
    [gif] = message.attachments
    media = attachment_content(message, gif)
    assert media.data[:4] == b"GIF8" and len(media.data) == gif.size
    assert hashlib.sha256(media.data).hexdigest() == gif.sha256
    assert media.mime_type == "image/gif"


def test_an_oversize_attachment_was_not_kept() -> None:
    message = stored("cpython_msg_07_multipart_gif_attachments.eml", max_attachment_bytes=100)
    [gif] = message.attachments
    assert gif.media_id is None
    with pytest.raises(PermanentChannelError, match="too large"):
        attachment_content(message, gif)


def test_a_part_that_is_not_there_or_not_the_same_is_refused() -> None:
    message = stored("cpython_msg_07_multipart_gif_attachments.eml")
    [gif] = message.attachments
    with pytest.raises(PermanentChannelError, match="no part 9"):
        attachment_content(message, dataclasses.replace(gif, media_id="part:9"))
    with pytest.raises(PermanentChannelError, match="not the file"):
        attachment_content(message, dataclasses.replace(gif, sha256="0" * 64))
