"""Outbound through twilio-python's async client against a stand-in Twilio REST API."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import BasicAuth

from gateway.errors import PermanentChannelError, TransientChannelError
from gateway.model import Attachment, DeliveryState
from plugins.whatsapp import WhatsAppAdapter, make_adapter
from tests.whatsapp.fakes import FakeTwilio, twilio_error
from tests.whatsapp.support import (
    TWILIO_SID,
    TWILIO_TOKEN,
    agent_message,
    conversation,
    make_context,
    twilio_config,
)

# Our message id rides in the query, so a status report can find the message it is about.
SERVICE = "MG" + "7" * 32
CALLBACK = "https://gw.example.com/webhooks/wa-twilio?gw_message=m_01TEST"


def _adapter(session: aiohttp.ClientSession, base_url: str, **overrides: Any) -> WhatsAppAdapter:
    config = twilio_config(api_base_url=base_url, **overrides)
    return make_adapter(make_context(config, session))


async def test_text(fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_twilio.base_url)
    result = await adapter.send(conversation(), agent_message("Hola Ana"))
    assert result.provider_message_id == "SM" + "1".zfill(32)
    assert result.status == DeliveryState.QUEUED
    (call,) = fake_twilio.calls
    assert call.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert call.form == {
        "To": ["whatsapp:+5511999990000"],
        "From": ["whatsapp:+14155238886"],
        "Body": ["Hola Ana"],
        "StatusCallback": [CALLBACK],
    }
    auth = BasicAuth.decode(call.headers["Authorization"])
    assert (auth.login, auth.password) == (TWILIO_SID, TWILIO_TOKEN)
    assert adapter.health().ok


async def test_media_and_service(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = _adapter(
        http_session, fake_twilio.base_url, **{"from": None, "messaging_service_sid": SERVICE}
    )
    attachments = (
        Attachment(kind="image", url="https://cdn.example.com/a.jpg"),
        Attachment(kind="document", url="https://cdn.example.com/b.pdf"),
    )
    await adapter.send(conversation(), agent_message("see", attachments=attachments))
    form = fake_twilio.calls[0].form
    assert form["MediaUrl"] == ["https://cdn.example.com/a.jpg", "https://cdn.example.com/b.pdf"]
    assert form["MessagingServiceSid"] == [SERVICE]
    assert "From" not in form


async def test_template(fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_twilio.base_url)
    template = {"name": "HXabc", "language": "es", "params": ["Ana", 42]}
    await adapter.send(conversation(), agent_message(None, template=template))
    form = fake_twilio.calls[0].form
    assert form["ContentSid"] == ["HXabc"]
    assert orjson.loads(form["ContentVariables"][0]) == {"1": "Ana", "2": "42"}
    assert "Body" not in form
    assert form["StatusCallback"] == [CALLBACK]


@pytest.mark.parametrize(
    ("reply", "error", "code", "closes"),
    [
        (twilio_error(63016, "Outside the allowed window"), PermanentChannelError, "63016", True),
        (twilio_error(21211, "Invalid 'To' Phone Number"), PermanentChannelError, "21211", False),
        (twilio_error(20429, "Too Many Requests", 429), TransientChannelError, "20429", False),
        (twilio_error(20500, "Internal Server Error", 500), TransientChannelError, "20500", False),
        ((503, "<html>Service Unavailable</html>"), TransientChannelError, "503", False),
    ],
)
async def test_errors_are_classified(
    reply: tuple[int, Any],
    error: type[Exception],
    code: str,
    closes: bool,
    fake_twilio: FakeTwilio,
    http_session: aiohttp.ClientSession,
) -> None:
    fake_twilio.replies.append(reply)
    adapter = _adapter(http_session, fake_twilio.base_url)
    with pytest.raises(error) as info:
        await adapter.send(conversation(), agent_message())
    exc = info.value
    assert getattr(exc, "provider_code", None) == code
    assert getattr(exc, "closes_window", False) is closes
    assert TWILIO_TOKEN not in str(exc)


async def test_an_answer_without_a_sid_fails_the_message(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    """No status report could ever be matched to it: failed, not queued for good."""
    fake_twilio.replies.append((201, {"status": "queued", "body": "hola"}))
    adapter = _adapter(http_session, fake_twilio.base_url)
    with pytest.raises(PermanentChannelError, match="no sid"):
        await adapter.send(conversation(), agent_message())


async def test_retry_after_is_kept_for_the_retry(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    """twilio-python's exception drops the headers: the HTTP client notes `Retry-After`."""
    status, body = twilio_error(20429, "Too Many Requests", 429)
    fake_twilio.replies.append((status, body, {"Retry-After": "3"}))
    adapter = _adapter(http_session, fake_twilio.base_url)
    with pytest.raises(TransientChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert info.value.retry_after == 3.0
    # The next send's refusal says nothing of the last one's wait.
    fake_twilio.replies.append(twilio_error(20429, "Too Many Requests", 429))
    with pytest.raises(TransientChannelError) as again:
        await adapter.send(conversation(), agent_message())
    assert again.value.retry_after is None


async def test_bad_credentials(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = _adapter(http_session, fake_twilio.base_url, auth_token="not-the-token")
    with pytest.raises(PermanentChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert info.value.provider_code == "20003"
    assert "not-the-token" not in str(info.value)
    assert not adapter.health().ok


async def test_echoed_secret_is_redacted(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    fake_twilio.replies.append(twilio_error(21212, f"bad request for {TWILIO_TOKEN}"))
    adapter = _adapter(http_session, fake_twilio.base_url)
    with pytest.raises(PermanentChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert TWILIO_TOKEN not in str(info.value) and "***" in str(info.value)


async def test_timeout_is_transient(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    fake_twilio.delay = 1.0
    adapter = _adapter(http_session, fake_twilio.base_url, request_timeout="100ms")
    with pytest.raises(TransientChannelError):
        await adapter.send(conversation(), agent_message())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_transient(http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TransientChannelError):
        await adapter.send(conversation(), agent_message())


async def test_nothing_to_send_is_refused_before_calling(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = _adapter(http_session, fake_twilio.base_url)
    with pytest.raises(PermanentChannelError):
        await adapter.send(conversation(), agent_message(None))
    with pytest.raises(PermanentChannelError):
        no_url = (Attachment(kind="image", media_id="123"),)
        await adapter.send(conversation(), agent_message("x", attachments=no_url))
    assert fake_twilio.calls == []
