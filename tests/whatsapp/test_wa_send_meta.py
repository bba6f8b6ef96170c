"""Outbound through the Graph API against a stand-in that answers like Meta."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from gateway.errors import PermanentChannelError, TransientChannelError
from gateway.model import Attachment, DeliveryState
from plugins.whatsapp import WhatsAppAdapter, make_adapter
from plugins.whatsapp.config import DEFAULT_GRAPH_VERSION
from tests.whatsapp.fakes import FakeGraph, meta_error
from tests.whatsapp.support import (
    META_TOKEN,
    agent_message,
    conversation,
    make_context,
    meta_config,
)

PATH = f"/{DEFAULT_GRAPH_VERSION}/1122334455667/messages"


def _adapter(session: aiohttp.ClientSession, base_url: str, **overrides: Any) -> WhatsAppAdapter:
    return make_adapter(make_context(meta_config(api_base_url=base_url, **overrides), session))


async def test_text(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_graph.base_url)
    result = await adapter.send(conversation(), agent_message("Hola Ana"))
    assert result.provider_message_id == "wamid.OUT1"
    assert result.status == DeliveryState.QUEUED
    (call,) = fake_graph.calls
    assert call.path == PATH
    assert call.headers["Authorization"] == f"Bearer {META_TOKEN}"
    assert call.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "5511999990000",
        "type": "text",
        "text": {"preview_url": False, "body": "Hola Ana"},
        "biz_opaque_callback_data": "m_01TEST",
    }


async def test_reply_and_graph_version(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    adapter = _adapter(http_session, fake_graph.base_url, graph_version="v21.0")
    await adapter.send(conversation(), agent_message("yes", reply_to="wamid.quoted"))
    assert fake_graph.calls[0].path == "/v21.0/1122334455667/messages"
    assert fake_graph.calls[0].json["context"] == {"message_id": "wamid.quoted"}


async def test_template(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_graph.base_url)
    template = {"name": "order_update", "language": "es", "params": ["Ana", 42]}
    await adapter.send(conversation(), agent_message(None, template=template))
    body = fake_graph.calls[0].json
    assert body["type"] == "template"
    assert body["template"] == {
        "name": "order_update",
        "language": {"code": "es"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "42"}],
            }
        ],
    }
    assert "text" not in body


async def test_media(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_graph.base_url)
    image = Attachment(kind="image", url="https://cdn.example.com/a.jpg")
    await adapter.send(conversation(), agent_message("look", attachments=(image,)))
    doc = Attachment(kind="file", media_id="998", mime_type="application/pdf", filename="q.pdf")
    await adapter.send(conversation(), agent_message(None, attachments=(doc,)))
    first, second = (c.json for c in fake_graph.calls)
    assert first["type"] == "image"
    assert first["image"] == {"link": "https://cdn.example.com/a.jpg", "caption": "look"}
    assert second["type"] == "document"
    assert second["document"] == {"id": "998", "filename": "q.pdf"}


async def test_unsendable_is_refused_before_calling(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    adapter = _adapter(http_session, fake_graph.base_url)
    audio = Attachment(kind="audio", media_id="1")
    two = (Attachment(kind="image", media_id="1"), Attachment(kind="image", media_id="2"))
    for message in (
        agent_message(None),
        agent_message("caption", attachments=(audio,)),
        agent_message(None, attachments=two),
        agent_message(None, template={"name": "x"}),
    ):
        with pytest.raises(PermanentChannelError):
            await adapter.send(conversation(), message)
    assert fake_graph.calls == []


@pytest.mark.parametrize(
    ("reply", "error", "code", "closes"),
    [
        (meta_error(131047, "Re-engagement message"), PermanentChannelError, "131047", True),
        (meta_error(131026, "Message undeliverable"), PermanentChannelError, "131026", False),
        (meta_error(100, "Invalid parameter"), PermanentChannelError, "100", False),
        (meta_error(130429, "Rate limit hit"), TransientChannelError, "130429", False),
        (meta_error(80007, "Rate limit issues", 429), TransientChannelError, "80007", False),
        (meta_error(1, "An unknown error occurred", 500), TransientChannelError, "1", False),
        ((502, "<html>Bad Gateway</html>"), TransientChannelError, None, False),
    ],
)
async def test_errors_are_classified(
    reply: tuple[int, Any],
    error: type[Exception],
    code: str | None,
    closes: bool,
    fake_graph: FakeGraph,
    http_session: aiohttp.ClientSession,
) -> None:
    fake_graph.replies.append(reply)
    adapter = _adapter(http_session, fake_graph.base_url)
    with pytest.raises(error) as info:
        await adapter.send(conversation(), agent_message())
    assert getattr(info.value, "provider_code", None) == code
    assert getattr(info.value, "closes_window", False) is closes
    assert META_TOKEN not in str(info.value)
    assert adapter.health().ok


@pytest.mark.parametrize(("header", "wait"), [("2", 2.0), (None, None), ("soon", None)])
async def test_retry_after_is_kept_for_the_retry(
    header: str | None,
    wait: float | None,
    fake_graph: FakeGraph,
    http_session: aiohttp.ClientSession,
) -> None:
    status, body = meta_error(80007, "Rate limit issues", 429)
    fake_graph.replies.append((status, body, {"Retry-After": header} if header else {}))
    adapter = _adapter(http_session, fake_graph.base_url)
    with pytest.raises(TransientChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert info.value.retry_after == wait


async def test_bad_token(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    adapter = _adapter(http_session, fake_graph.base_url, access_token="EAAG-wrong-token")
    with pytest.raises(PermanentChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert info.value.provider_code == "190"
    assert "EAAG-wrong-token" not in str(info.value)
    health = adapter.health()
    assert not health.ok and "190" in health.detail


async def test_health_recovers(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    fake_graph.replies.append(meta_error(190, "Error validating access token", 401))
    adapter = _adapter(http_session, fake_graph.base_url)
    with pytest.raises(PermanentChannelError):
        await adapter.send(conversation(), agent_message())
    assert not adapter.health().ok
    await adapter.send(conversation(), agent_message())
    assert adapter.health().ok


async def test_echoed_token_is_redacted(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    fake_graph.replies.append(meta_error(100, f"token {META_TOKEN} is not allowed here"))
    adapter = _adapter(http_session, fake_graph.base_url)
    with pytest.raises(PermanentChannelError) as info:
        await adapter.send(conversation(), agent_message())
    assert META_TOKEN not in str(info.value) and "***" in str(info.value)


async def test_accepted_without_id_is_an_error(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    fake_graph.replies.append((200, {"messaging_product": "whatsapp", "messages": []}))
    adapter = _adapter(http_session, fake_graph.base_url)
    with pytest.raises(PermanentChannelError):
        await adapter.send(conversation(), agent_message())


async def test_timeout_is_transient(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    fake_graph.delay = 1.0
    adapter = _adapter(http_session, fake_graph.base_url, request_timeout="100ms")
    with pytest.raises(TransientChannelError):
        await adapter.send(conversation(), agent_message())


async def test_connection_refused_is_transient(http_session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = _adapter(http_session, f"http://127.0.0.1:{port}")
    with pytest.raises(TransientChannelError):
        await adapter.send(conversation(), agent_message())


async def test_unreachable_provider_degrades_health_until_a_send_succeeds(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    """/readyz must not call a channel healthy while every send fails: three transient
    failures in a row (one message's retries, or several messages) mark it degraded."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = _adapter(http_session, f"http://127.0.0.1:{port}")
    for attempt in range(3):
        assert dead.health().ok, attempt
        with pytest.raises(TransientChannelError):
            await dead.send(conversation(), agent_message())
    health = dead.health()
    assert not health.ok and "last 3 send attempts failed" in health.detail
    assert "graph API unreachable" in health.detail and META_TOKEN not in health.detail

    adapter = _adapter(http_session, fake_graph.base_url)
    for _ in range(3):
        fake_graph.replies.append(meta_error(1, "An unknown error occurred", 500))
        with pytest.raises(TransientChannelError):
            await adapter.send(conversation(), agent_message())
    assert not adapter.health().ok
    await adapter.send(conversation(), agent_message())  # the provider answers again
    assert adapter.health().ok
