"""Logs carry request ids and conversation ids, never message bodies or tokens."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.api.conftest import TOKENS, Gateway


async def test_logs_have_ids_but_no_bodies_or_tokens(gw: Gateway) -> None:
    with capture_logs() as logs:
        v = await gw.visitor("Ana")
        await gw.visitor_says(v["token"], "my card is 4111-1111-1111-1111", "c1")
        _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
        conv_id = inbox["conversations"][0]["id"]
        await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
        await gw.post(
            "maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "reply-body-xyz"}
        )
        await gw.post("maria", "/api/v1/conversations/c_nope/accept")
        await gw.settle()
    text = repr(logs)
    assert "4111-1111" not in text and "reply-body-xyz" not in text
    assert TOKENS["maria"] not in text and v["token"] not in text
    stored = [e for e in logs if e["event"] == "ingest.stored"]
    assert stored and stored[0]["conversation_id"] == conv_id
    accepted = [e for e in logs if e["event"] == "conversation.accepted"]
    assert accepted and accepted[0]["conversation_id"] == conv_id
    refused = [e for e in logs if e["event"] == "http.refused"]
    assert refused and refused[0]["status"] == 404
