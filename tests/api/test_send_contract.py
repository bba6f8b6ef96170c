"""The agent send path's contract over real HTTP: who an Idempotency-Key replay answers, a key
reused for a different request, and replies on conversations that take no more replies."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tests.api.conftest import Gateway
from tests.api.test_agent_api import waiting_conversation


async def accepted_conversation(gw: Gateway, agent: str = "maria", name: str = "Ana") -> str:
    conv_id = await waiting_conversation(gw, name=name)
    status, body = await gw.post(agent, f"/api/v1/conversations/{conv_id}/accept")
    assert status == 200, body
    return conv_id


async def send(
    gw: Gateway, agent: str, conv_id: str, body: dict[str, Any], key: str | None = None
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await gw.post(agent, f"/api/v1/conversations/{conv_id}/messages", body, headers=headers)


async def outbound(gw: Gateway, conv_id: str) -> list[dict[str, Any]]:
    status, body = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert status == 200, body
    return [m for m in body["messages"] if m["direction"] == "out"]


async def test_a_replay_answers_only_a_caller_who_may_send(gw: Gateway) -> None:
    conv_id = await accepted_conversation(gw)
    status, first = await send(gw, "maria", conv_id, {"text": "Hola!"}, key="k1")
    assert status == 202, first
    await gw.settle()
    _, before = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    # Jose is on the queue but does not hold the conversation: the same answer as a new send.
    for key in ("k1", "fresh"):
        status, body = await send(gw, "jose", conv_id, {"text": "Hola!"}, key=key)
        assert status == 403, body
        assert body["error"]["code"] == "not_assignee"
        assert first["message"]["id"] not in str(body)
    # Ana is not even on the queue.
    status, body = await send(gw, "ana", conv_id, {"text": "Hola!"}, key="k1")
    assert status == 403 and first["message"]["id"] not in str(body)
    # The assignee's retry still gets the first answer.
    status, again = await send(gw, "maria", conv_id, {"text": "Hola!"}, key="k1")
    assert status == 202 and again["message"]["id"] == first["message"]["id"]
    _, after = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert after == before


async def test_many_replies_sent_at_once_to_one_conversation_are_all_stored(
    gw: Gateway,
) -> None:
    """A bot or an integration sending in parallel: every reply is stored and queued once. They
    used to race each other's compare-and-set on the conversation, and at 40 at once most got
    `409 conflict` though nothing conflicted (a soak audit)."""
    conv_id = await accepted_conversation(gw)
    texts = [f"parte {i}" for i in range(40)]
    answers = await asyncio.gather(
        *(send(gw, "maria", conv_id, {"text": text}, key=text) for text in texts)
    )
    assert [status for status, _ in answers] == [202] * len(texts), answers
    await gw.settle()
    assert sorted(m["text"] for m in await outbound(gw, conv_id)) == sorted(texts)
    _, body = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert body["version"] >= len(texts)


async def test_a_key_reused_for_a_different_request_is_refused(gw: Gateway) -> None:
    conv_id = await accepted_conversation(gw)
    image = {"kind": "image", "url": "https://example.com/1.jpg", "mime_type": "image/jpeg"}
    status, first = await send(
        gw, "maria", conv_id, {"text": "Hola!", "attachments": [image]}, key="k1"
    )
    assert status == 202, first
    await gw.settle()
    _, before = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    other_image = {**image, "url": "https://example.com/2.jpg"}
    different = [
        {"text": "Adiós", "attachments": [image]},
        {"text": "Hola!"},
        {"text": "Hola!", "attachments": [other_image]},
        {"text": "Hola!", "attachments": [{**image, "caption": "mira"}]},
        {"text": "Hola!", "attachments": [image, other_image]},
        {"attachments": [image]},
    ]
    for body in different:
        status, answer = await send(gw, "maria", conv_id, body, key="k1")
        assert status == 422, (body, answer)
        assert answer["error"]["code"] == "idempotency_key_reused"
        assert "different request" in answer["error"]["message"]
    _, after = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert after == before  # nothing stored, nothing changed
    # The identical request is still a replay, and the key is free on another conversation.
    status, again = await send(
        gw, "maria", conv_id, {"text": "Hola!", "attachments": [image]}, key="k1"
    )
    assert status == 202 and again["message"]["id"] == first["message"]["id"]
    other = await accepted_conversation(gw, name="Bea")
    status, body = await send(gw, "maria", other, {"text": "Otra"}, key="k1")
    assert status == 202 and body["message"]["id"] != first["message"]["id"]


async def test_replying_on_a_closed_conversation_says_it_is_closed(gw: Gateway) -> None:
    conv_id = await accepted_conversation(gw)
    status, body = await gw.post("maria", f"/api/v1/conversations/{conv_id}/close")
    assert status == 200, body
    for agent in ("maria", "jose"):
        status, body = await send(gw, agent, conv_id, {"text": "¿sigues ahí?"})
        assert status == 409, body
        assert body["error"]["code"] == "invalid_transition"
        message = body["error"]["message"]
        assert "closed" in message and "new conversation" in message
        assert "accept" not in message
    # An agent who cannot see the conversation learns nothing about its state.
    status, body = await send(gw, "ana", conv_id, {"text": "hola"})
    assert status == 403 and "closed" not in body["error"]["message"]
    assert await outbound(gw, conv_id) == []


async def test_replying_on_an_inactive_conversation_says_it_is_inactive(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw)
    gw.clock.advance(timedelta(minutes=6))  # the channel's no_agent_timeout is 5m
    await gw.runtime.scheduler.run_once()
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert (conv["state"], conv["inactive_reason"]) == ("inactive", "no_agent_available")
    status, body = await send(gw, "maria", conv_id, {"text": "¡Perdón por la espera!"})
    assert status == 409, body
    assert body["error"]["code"] == "invalid_transition"
    assert "inactive" in body["error"]["message"]
    assert "new conversation" in body["error"]["message"]
    assert await outbound(gw, conv_id) == []
    status, body = await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    assert status == 409
    assert body["error"]["message"] == "an inactive conversation cannot be accepted"


async def test_the_senders_retry_gets_its_first_answer_after_a_close(gw: Gateway) -> None:
    """Idempotency: the agent who sent under a key gets the same answer on a retry, even if the
    conversation closed meanwhile; a new key (a new send) is refused as closed."""
    conv_id = await accepted_conversation(gw)
    status, first = await send(gw, "maria", conv_id, {"text": "Hola!"}, key="k1")
    assert status == 202
    await gw.settle()
    assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/close"))[0] == 200
    status, again = await send(gw, "maria", conv_id, {"text": "Hola!"}, key="k1")
    assert status == 202 and again["message"]["id"] == first["message"]["id"]
    status, body = await send(gw, "maria", conv_id, {"text": "Hola!"}, key="k2")
    assert status == 409 and body["error"]["code"] == "invalid_transition"
    status, body = await send(gw, "maria", conv_id, {"text": "Other"}, key="k1")
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"


async def test_a_template_on_a_channel_without_templates_is_refused_before_storing(
    gw: Gateway,
) -> None:
    """The web chat (like email) has no templates: a 400 now, not a 202 that fails later."""
    conv_id = await accepted_conversation(gw)
    template = {"template": {"name": "hello", "language": "es", "params": ["Ana"]}}
    status, body = await send(gw, "maria", conv_id, template, key="t1")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert "webchat channel has no templates" in body["error"]["message"]
    assert await outbound(gw, conv_id) == []


async def test_a_reply_of_only_blanks_or_with_a_nul_is_refused(gw: Gateway) -> None:
    conv_id = await accepted_conversation(gw)
    for text, reason in (("   \n\t", "only whitespace"), ("a\x00b", "NUL character")):
        status, body = await send(gw, "maria", conv_id, {"text": text})
        assert status == 400, body
        assert reason in body["error"]["message"]
    assert await outbound(gw, conv_id) == []


async def test_attachment_urls_must_be_public_http_and_kinds_follow_the_mime_type(
    gw: Gateway,
) -> None:
    conv_id = await accepted_conversation(gw)
    for url in ("file:///etc/passwd", "not a url", "/media/x.jpg", "ftp://example.com/x"):
        status, body = await send(gw, "maria", conv_id, {"attachments": [{"url": url}]})
        assert status == 400, (url, body)
        assert "absolute http:// or https:// URL" in body["error"]["message"]
    for mime in ("text/plain\r\nBcc: x@example.com", "image/png\n", "png", "image/"):
        attachment = {"url": "https://example.com/a.png", "mime_type": mime}
        status, body = await send(gw, "maria", conv_id, {"attachments": [attachment]})
        assert status == 400 and "type/subtype" in body["error"]["message"], (mime, body)
    assert await outbound(gw, conv_id) == []
    files = [
        {"url": "https://example.com/a.jpg", "mime_type": "image/jpeg"},
        {"url": "https://example.com/a.ogg", "mime_type": "audio/ogg"},
        {"url": "https://example.com/a.pdf", "mime_type": "application/pdf"},
        {"url": "https://example.com/a.bin"},
        {"url": "https://example.com/b.jpg", "mime_type": "image/jpeg", "kind": "document"},
    ]
    status, body = await send(gw, "maria", conv_id, {"text": "files", "attachments": files})
    assert status == 202, body
    kinds = [a["kind"] for a in body["message"]["attachments"]]
    assert kinds == ["image", "audio", "document", "document", "document"]
