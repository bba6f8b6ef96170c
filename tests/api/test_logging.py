"""Logs carry request ids and conversation ids, never message bodies or tokens."""

from __future__ import annotations

from datetime import timedelta

import structlog
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


async def test_every_answer_carries_a_request_id_that_its_log_lines_share(gw: Gateway) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        first = await gw.client.get("/api/v1/conversations/c_nope", headers=gw.auth("maria"))
        second = await gw.client.get("/api/v1/conversations/c_nope", headers=gw.auth("maria"))
        given = await gw.client.get(
            "/api/v1/conversations/c_nope",
            headers={**gw.auth("maria"), "X-Request-Id": "lb-" + "x" * 100},
        )
    made = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert all(made) and made[0] != made[1]
    assert given.headers["X-Request-Id"] == ("lb-" + "x" * 100)[:64]  # a caller's id, capped
    refused = [e.get("request_id") for e in logs if e["event"] == "http.refused"]
    assert refused == [*made, given.headers["X-Request-Id"]]


async def test_refused_web_chat_requests_leave_one_line_without_the_token(gw: Gateway) -> None:
    v = await gw.visitor("Ana")
    forged = v["token"][:-4] + "AAAA"
    with capture_logs() as logs:
        bad_json = await gw.client.post("/webchat/site/session", data=b"{nope")
        bad_token = await gw.client.post(
            "/webchat/site/messages",
            json={"text": "hola", "client_id": "c1"},
            headers={"Authorization": f"Bearer {forged}"},
        )
        bad_socket = await gw.client.get(f"/webchat/site/ws?token={forged}")
    assert (bad_json.status, bad_token.status, bad_socket.status) == (400, 401, 401)
    refused = [e for e in logs if e["event"] == "webchat.refused"]
    assert [(e["status"], e["code"]) for e in refused] == [
        (400, "invalid_json"),
        (401, "invalid_token"),
        (401, "invalid_token"),
    ]
    assert all(e["path"].startswith("/webchat/site/") and "?" not in e["path"] for e in refused)
    assert forged not in repr(logs) and v["token"] not in repr(logs)


async def test_a_refusal_logs_why_not_only_its_code(gw: Gateway) -> None:
    """Two different mistakes with one code read differently in the log, as in the answer
    (ops audit: a wrong `state` and `limit=0` were the same line); aiohttp's own refusals
    (unknown path, wrong method) carry a code too."""
    with capture_logs() as logs:
        state = await gw.client.get("/api/v1/inbox?state=sleeping", headers=gw.auth("maria"))
        limit = await gw.client.get("/api/v1/events?limit=0", headers=gw.auth("maria"))
        missing = await gw.client.get("/api/v1/nowhere", headers=gw.auth("maria"))
        method = await gw.client.delete("/api/v1/inbox", headers=gw.auth("maria"))
    bodies = [(await r.json())["error"] for r in (state, limit, missing, method)]
    refused = [e for e in logs if e["event"] == "http.refused"]
    assert [(e["status"], e["code"], e["reason"]) for e in refused] == [
        (r.status, body["code"], body["message"])
        for r, body in zip((state, limit, missing, method), bodies, strict=True)
    ]
    assert [e["status"] for e in refused] == [400, 400, 404, 405]
    assert refused[0]["reason"] != refused[1]["reason"]


async def test_a_wrong_method_is_told_which_methods_the_resource_takes(gw: Gateway) -> None:
    """RFC 9110: a 405 carries `Allow` (ops audit: none did, on any route)."""
    cases = [
        ("DELETE", "/api/v1/inbox", {"GET", "HEAD"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("GET", "/webchat/site/session", {"POST", "OPTIONS"}),
    ]
    for method, path, allowed in cases:
        resp = await gw.client.request(method, path, headers=gw.auth("maria"))
        assert resp.status == 405, path
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
        assert {m.strip() for m in resp.headers["Allow"].split(",")} >= allowed, path


async def test_a_timer_that_changes_a_conversation_says_which_and_how(gw: Gateway) -> None:
    """Ops audit: expiries were logged as `timers.fired count=1`, with no timer, no
    conversation and no outcome."""
    visitor = await gw.visitor("Nadie")
    await gw.visitor_says(visitor["token"], "¿hola?", "n1")
    (conv,) = (await gw.get("maria", "/api/v1/inbox?state=waiting"))[1]["conversations"]
    gw.clock.advance(timedelta(minutes=6))  # nobody of the queue online: no_agent_timeout
    with capture_logs() as logs:
        await gw.runtime.scheduler.run_once()
    fired = [e for e in logs if e["event"] == "timers.fired"]
    assert [(e["kind"], e["conversation_id"], e["state"], e["inactive_reason"]) for e in fired] == [
        ("no_agent", conv["id"], "inactive", "no_agent_available")
    ]
