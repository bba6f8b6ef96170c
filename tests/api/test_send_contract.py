"""The agent send path's contract over real HTTP: who an Idempotency-Key replay answers, a key
reused for a different request, and replies on conversations that take no more replies."""

from __future__ import annotations

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
