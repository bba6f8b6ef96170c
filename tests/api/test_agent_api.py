"""The agent API over real HTTP: inbox, preview, accept race, replies, state changes, errors."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from tests.api.conftest import Gateway


async def waiting_conversation(gw: Gateway, text: str = "Hola", name: str = "Ana") -> str:
    visitor = await gw.visitor(name)
    ack = await gw.visitor_says(visitor["token"], text, f"c-{name}-{text}")
    status, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting&queue=support")
    assert status == 200
    for conv in inbox["conversations"]:
        if conv["contact"]["address"] == visitor["visitor_id"]:
            return str(conv["id"])
    raise AssertionError(f"no waiting conversation for {ack}")


async def test_auth_is_required(gw: Gateway) -> None:
    resp = await gw.client.get("/api/v1/inbox")
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "unauthorized"
    resp = await gw.client.get("/api/v1/inbox", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401


async def test_waiting_inbox_is_fifo_with_contract_shape(gw: Gateway) -> None:
    ids = []
    for name in ["first", "second", "third"]:
        ids.append(await waiting_conversation(gw, "Hola", name))
        gw.clock.advance(timedelta(minutes=10))
    status, body = await gw.get("maria", "/api/v1/inbox?state=waiting")
    assert status == 200
    assert [c["id"] for c in body["conversations"]] == ids
    conv = body["conversations"][0]
    for key in [
        "id",
        "state",
        "channel",
        "channel_type",
        "queue",
        "agent",
        "contact",
        "queued_at",
        "last_message_at",
        "window_expires_at",
        "can_reply",
        "inactive_reason",
        "preview",
    ]:
        assert key in conv, key
    assert conv["state"] == "waiting" and conv["channel"] == "site"
    assert conv["channel_type"] == "webchat" and conv["agent"] is None
    assert conv["queued_at"].endswith("Z") and conv["can_reply"] is True
    assert conv["preview"] == "Hola"
    assert conv["contact"]["display_name"] == "first"


async def test_bad_state_and_queue(gw: Gateway) -> None:
    status, body = await gw.get("maria", "/api/v1/inbox?state=lost")
    assert status == 400 and "state must be one of" in body["error"]["message"]
    status, body = await gw.get("ana", "/api/v1/inbox?queue=support")
    assert status == 403 and body["error"]["code"] == "not_on_queue"
    status, body = await gw.get("ana", "/api/v1/inbox?queue=nosuch")  # not a queue at all
    assert status == 404 and body["error"] == {
        "code": "not_found",
        "message": "no queue named 'nosuch'",
    }
    # Ambiguous or unreadable parameters are refused, not read as something else.
    for query, reason in (
        ("state=waiting&state=active", "give state once"),
        ("mine=perhaps", "mine must be true or false"),
        ("limit=5&limit=6", "give limit once"),
    ):
        status, body = await gw.get("maria", f"/api/v1/inbox?{query}")
        assert status == 400 and body["error"]["message"] == reason, query
    status, _ = await gw.get("maria", "/api/v1/inbox?mine=false")
    assert status == 200


async def test_routing_sends_price_questions_to_sales(gw: Gateway) -> None:
    visitor = await gw.visitor("Bea")
    await gw.visitor_says(visitor["token"], "What is the price?", "c1")
    status, body = await gw.get("ana", "/api/v1/inbox?state=waiting&queue=sales")
    assert status == 200
    assert [c["contact"]["address"] for c in body["conversations"]] == [visitor["visitor_id"]]


async def test_preview_without_accepting(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw, "Necesito ayuda")
    status, body = await gw.get("jose", f"/api/v1/conversations/{conv_id}")
    assert status == 200
    assert body["state"] == "waiting" and body["agent"] is None
    assert [m["text"] for m in body["messages"]] == ["Necesito ayuda"]
    message = body["messages"][0]
    assert message["direction"] == "in" and message["kind"] == "text"
    assert message["status"] is None and message["attachments"] == []
    # An agent not on the queue may not read it; an unknown id is a 404.
    status, body = await gw.get("ana", f"/api/v1/conversations/{conv_id}")
    assert status == 403
    status, body = await gw.get("maria", "/api/v1/conversations/c_nope")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_two_agents_race_to_accept(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw)
    results = await asyncio.gather(
        gw.post("maria", f"/api/v1/conversations/{conv_id}/accept"),
        gw.post("jose", f"/api/v1/conversations/{conv_id}/accept"),
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409]
    loser = next(body for status, body in results if status == 409)
    assert loser["error"]["code"] == "already_taken"
    winner = next(body for status, body in results if status == 200)
    assert winner["conversation"]["state"] == "active"
    _, body = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert body["agent"] == winner["conversation"]["agent"]
    # The winner's retry (a lost response) succeeds without a change; the loser still loses.
    holder = winner["conversation"]["agent"]
    other = "jose" if holder == "maria" else "maria"
    status, again = await gw.post(holder, f"/api/v1/conversations/{conv_id}/accept")
    assert status == 200 and again["conversation"]["version"] == body["version"]
    status, lost = await gw.post(other, f"/api/v1/conversations/{conv_id}/accept")
    assert (status, lost["error"]["code"]) == (409, "already_taken")


async def test_lifecycle_over_http(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw)
    base = f"/api/v1/conversations/{conv_id}"
    status, body = await gw.post("maria", f"{base}/pending")
    assert status == 409 and body["error"]["code"] == "invalid_transition"
    assert (await gw.post("maria", f"{base}/accept"))[0] == 200
    status, body = await gw.post("jose", f"{base}/pending")
    assert status == 403 and body["error"]["code"] == "not_assignee"
    status, body = await gw.post("maria", f"{base}/pending")
    assert status == 200 and body["conversation"]["state"] == "pending"
    # Why it waits, and when it goes back to the queue (support: requeue_after 10m).
    assert body["conversation"]["pending_reason"] == "set_aside"
    back = datetime.fromisoformat(body["conversation"]["requeue_at"])
    assert back == gw.clock.now() + timedelta(minutes=10)
    status, body = await gw.post("maria", f"{base}/resume")
    assert status == 200 and body["conversation"]["state"] == "active"
    assert body["conversation"]["pending_reason"] is None
    assert body["conversation"]["requeue_at"] is None
    status, body = await gw.post("maria", f"{base}/transfer", {"agent": "jose"})
    assert status == 200 and body["conversation"]["agent"] == "jose"
    status, body = await gw.post("jose", f"{base}/transfer", {"queue": "sales"})
    assert status == 200
    assert body["conversation"]["state"] == "waiting" and body["conversation"]["queue"] == "sales"
    status, body = await gw.post("jose", f"{base}/transfer", {})
    assert status in (400, 409)
    # Waiting leaves the queue only by being accepted (DESIGN.md section 1): no closing it.
    status, body = await gw.post("ana", f"{base}/close")
    assert status == 409 and body["error"]["code"] == "invalid_transition"
    _, body = await gw.get("ana", base)
    assert body["state"] == "waiting" and body["agent"] is None
    assert (await gw.post("ana", f"{base}/accept"))[0] == 200
    status, body = await gw.post("ana", f"{base}/close")
    assert status == 200 and body["conversation"]["state"] == "closed"
    assert body["conversation"]["agent"] == "ana"
    status, body = await gw.post("ana", f"{base}/accept")
    assert status == 409
    # Nothing changed by the refused calls.
    status, body = await gw.get("ana", base)
    assert body["state"] == "closed"


async def test_max_active_is_enforced(gw: Gateway) -> None:
    convs = [await waiting_conversation(gw, "x", f"v{i}") for i in range(3)]
    for conv_id in convs[:2]:
        assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    status, body = await gw.post("maria", f"/api/v1/conversations/{convs[2]}/accept")
    assert status == 409 and body["error"]["code"] == "max_active_reached"


async def test_reply_with_idempotency_key_sends_once(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw)
    base = f"/api/v1/conversations/{conv_id}"
    status, body = await gw.post("maria", f"{base}/messages", {"text": "too early"})
    assert status == 403 and body["error"]["code"] == "not_assignee"
    await gw.post("maria", f"{base}/accept")
    headers = {"Idempotency-Key": "reply-1"}
    first = await gw.post("maria", f"{base}/messages", {"text": "Hola!"}, headers=headers)
    again = await gw.post("maria", f"{base}/messages", {"text": "Hola!"}, headers=headers)
    assert first[0] == again[0] == 202
    assert first[1]["message"]["id"] == again[1]["message"]["id"]
    assert first[1]["message"]["status"] == "queued"
    assert first[1]["message"]["direction"] == "out"
    await gw.settle()
    status, body = await gw.get("maria", base)
    outbound = [m for m in body["messages"] if m["direction"] == "out"]
    assert len(outbound) == 1 and outbound[0]["status"] == "sent"
    assert body["preview"] == "Hola!"


async def test_bad_bodies_are_4xx_and_change_nothing(gw: Gateway) -> None:
    conv_id = await waiting_conversation(gw)
    base = f"/api/v1/conversations/{conv_id}"
    await gw.post("maria", f"{base}/accept")
    resp = await gw.client.post(f"{base}/messages", data=b"{not json", headers=gw.auth("maria"))
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    status, body = await gw.post("maria", f"{base}/messages", {"txt": "typo"})
    assert status == 400 and "txt" in body["error"]["message"]
    status, body = await gw.post("maria", f"{base}/messages", {"text": 5})
    assert status == 400
    huge = {"text": "x" * 2_000_000}
    resp = await gw.client.post(f"{base}/messages", json=huge, headers=gw.auth("maria"))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    status, body = await gw.get("maria", base)
    assert [m["direction"] for m in body["messages"]] == ["in"]
    assert body["version"] == 2  # created, accepted: the refusals wrote nothing


async def test_events_are_resumable_by_cursor(gw: Gateway) -> None:
    for i in range(3):
        await waiting_conversation(gw, "hi", f"e{i}")
    status, page1 = await gw.get("maria", "/api/v1/events?limit=4")
    assert status == 200 and len(page1["events"]) == 4
    status, page2 = await gw.get("maria", f"/api/v1/events?after={page1['cursor']}")
    cursors = [e["cursor"] for e in page1["events"] + page2["events"]]
    assert len(cursors) == len(set(cursors)) == 6
    types = [e["type"] for e in page1["events"] + page2["events"]]
    assert types.count("message.received") == 3 and types.count("conversation.created") == 3
    received = next(e for e in page1["events"] if e["type"] == "message.received")
    message = received["message"]
    for key in [
        "id",
        "channel",
        "channel_type",
        "provider",
        "provider_message_id",
        "conversation_id",
        "contact",
        "sent_at",
        "received_at",
        "kind",
        "text",
        "attachments",
        "reply_to",
        "raw",
    ]:
        assert key in message, key
    status, empty = await gw.get("maria", f"/api/v1/events?after={page2['cursor']}")
    assert empty["events"] == [] and empty["cursor"] == page2["cursor"]
    status, _ = await gw.get("maria", "/api/v1/events?after=garbage")
    assert status == 400


def one_past(cursor: str) -> str:
    """The cursor right after `cursor` in either store's format (the last run of digits + 1)."""
    head = cursor.rstrip("0123456789")
    digits = cursor[len(head) :]
    return head + str(int(digits) + 1).zfill(len(digits))


async def test_events_refuse_cursors_the_gateway_never_issued(gw: Gateway) -> None:
    async def refused(after: str) -> None:
        status, body = await gw.get("maria", "/api/v1/events", params={"after": after})
        assert status == 400, (after, body)
        assert body["error"] == {
            "code": "invalid_request",
            "message": "after is not a cursor this gateway issued",
        }

    # An empty log has issued no cursor: only "no cursor" (absent or empty) is the start.
    status, empty = await gw.get("maria", "/api/v1/events")
    assert status == 200 and empty == {"events": [], "cursor": None, "gap": False}
    status, empty = await gw.get("maria", "/api/v1/events?after=")
    assert status == 200 and empty == {"events": [], "cursor": None, "gap": False}
    for after in ["0000000000000001", "000001700000000000-0000000000", "0", "-1"]:
        await refused(after)
    for i in range(2):
        await waiting_conversation(gw, "hi", f"n{i}")
    status, page = await gw.get("maria", "/api/v1/events")
    cursors = [e["cursor"] for e in page["events"]]
    newest = await gw.runtime.store.last_cursor()
    assert newest is not None and page["cursor"] == cursors[-1] == newest
    zero = "".join("0" if c.isdigit() else c for c in newest)
    nines = "".join("9" if c.isdigit() else c for c in newest)
    for after in [one_past(newest), nines, zero, "9999999999999999", "-1", "-" + newest[1:]]:
        await refused(after)
    for after in [" " + newest, newest + " ", "+" + newest[1:], newest[:-1], newest + "0"]:
        await refused(after)
    await refused(newest.replace("0", "\u0660"))  # an Arabic-Indic zero is a digit to int()
    status, _ = await gw.get("maria", f"/api/v1/events?after={one_past(newest)}&wait=5")
    assert status == 400  # refused at once, not after a long poll
    # Every issued cursor resumes, the newest one with an empty page that echoes it.
    for i, cursor in enumerate(cursors):
        status, rest = await gw.get("maria", "/api/v1/events", params={"after": cursor})
        assert status == 200 and [e["cursor"] for e in rest["events"]] == cursors[i + 1 :]
    status, rest = await gw.get("maria", "/api/v1/events", params={"after": newest})
    assert rest == {"events": [], "cursor": newest, "gap": False}


async def test_ops_endpoints(gw: Gateway) -> None:
    await waiting_conversation(gw)
    resp = await gw.client.get("/healthz")
    assert resp.status == 200
    resp = await gw.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["store"] == "ok" and body["adapters_started"]
    assert body["store_problem"] is None
    resp = await gw.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert 'gateway_conversations{queue="support",state="waiting"} 1.0' in text
    assert 'gateway_ingested_messages_total{channel="site",outcome="stored"} 1.0' in text
    assert "gateway_ingest_seconds_bucket" in text
    assert "gateway_timer_lag_seconds" in text
    resp = await gw.client.get("/api/openapi.json")
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/conversations/{id}/accept" in spec["paths"]


async def test_unknown_route_is_json_404(gw: Gateway) -> None:
    resp = await gw.client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await gw.client.post("/webhooks/nope", data=b"x")
    assert resp.status == 404


async def test_agents_lists_colleagues_with_presence_and_load(gw: Gateway) -> None:
    from tests.api.test_stream_presence import open_stream

    ws = await open_stream(gw, "jose")
    status, body = await gw.get("ana", "/api/v1/agents")
    assert status == 200
    by_id = {a["id"]: a for a in body["agents"]}
    assert set(by_id) == {"maria", "jose", "ana"}  # everyone shares "sales" with ana
    assert by_id["jose"]["online"] is True and by_id["maria"]["online"] is False
    assert by_id["maria"]["queues"] == ["sales"]  # only the queues ana shares
    assert by_id["ana"]["max_active"] == 1 and by_id["ana"]["active"] == 0
    await ws.close()


async def test_transfer_targets_beyond_the_agents_own_queues(gw: Gateway) -> None:
    """Team audit: an agent could not hand a conversation to a queue they are not on from the
    page ("this is for Sales"), though the API takes it: every queue and every agent are
    offered on request."""
    _, me = await gw.get("ana", "/api/v1/me")
    assert (me["queues"], me["transfer_queues"]) == (["sales"], ["sales", "support"])
    _, shared = await gw.get("ana", "/api/v1/agents?all=0")
    assert {a["id"]: a["queues"] for a in shared["agents"]}["maria"] == ["sales"]
    _, everyone = await gw.get("ana", "/api/v1/agents?all=1")
    assert {a["id"]: a["queues"] for a in everyone["agents"]} == {
        "maria": ["sales", "support"],
        "jose": ["sales", "support"],
        "ana": ["sales"],
    }
    status, body = await gw.get("ana", "/api/v1/agents?all=maybe")
    assert (status, body["error"]["code"]) == (400, "invalid_request")


async def test_the_gateway_runs_on_the_parametrized_store(
    gw: Gateway, request: pytest.FixtureRequest
) -> None:
    kind = type(gw.runtime.store).__name__
    assert kind in ("SqliteStore", "RedisStore")
    assert ("[redis]" in request.node.name) == (kind == "RedisStore")


async def test_a_long_conversation_opens_at_its_newest_messages_and_pages_back(
    gw: Gateway,
) -> None:
    v = await gw.visitor("Larga")
    for i in range(5):
        await gw.visitor_says(v["token"], f"m{i}", f"c-{i}")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    path = f"/api/v1/conversations/{inbox['conversations'][0]['id']}"

    _, whole = await gw.get("maria", path)
    assert [m["text"] for m in whole["messages"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert whole["has_earlier"] is False
    _, newest = await gw.get("maria", f"{path}?limit=2")
    assert [m["text"] for m in newest["messages"]] == ["m3", "m4"] and newest["has_earlier"]
    _, before = await gw.get("maria", f"{path}?limit=2&before={newest['messages'][0]['id']}")
    assert [m["text"] for m in before["messages"]] == ["m1", "m2"] and before["has_earlier"]
    _, first = await gw.get("maria", f"{path}?limit=2&before={before['messages'][0]['id']}")
    assert [m["text"] for m in first["messages"]] == ["m0"] and not first["has_earlier"]
    other = await gw.visitor("Otra")
    await gw.visitor_says(other["token"], "not here", "o-1")
    (elsewhere,) = await gw.runtime.store.list_contact_messages("site", other["visitor_id"])
    for query in (
        "?before=nope",
        "?limit=0",
        "?limit=1001",
        "?before=m_1&before=m_2",
        f"?before={elsewhere.id}",  # another conversation's message
    ):
        status, body = await gw.get("maria", path + query)
        assert status == 400 and body["error"]["code"] == "invalid_request", query


async def test_the_inbox_is_read_page_after_page(gw: Gateway) -> None:
    """Past `limit` (at most 1000) the inbox goes on: `next_cursor` fetches the next page, in
    the same order, until it is null. A cursor the inbox did not hand out is a 400."""
    ids = []
    for i in range(5):
        ids.append(await waiting_conversation(gw, name=f"P{i}"))
        gw.clock.advance(timedelta(seconds=1))
    seen: list[str] = []
    path = "/api/v1/inbox?state=waiting&limit=2"
    cursor = None
    while True:
        status, body = await gw.get("maria", path + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        seen += [c["id"] for c in body["conversations"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        seen_cursor = cursor
        assert len(body["conversations"]) == 2
    assert seen == ids
    forged = ("9" * 19 + ".c_01", "9223372036854775808.c_01", "\uff11\uff12.c_01")
    bad_cursors = ("nope", "1.m_01", "-5.c_01", "1" * 20 + ".c_01")
    unlabelled = "1.c_01"  # no list named
    for bad in (unlabelled, *bad_cursors, *(f"waiting.{f}" for f in (*bad_cursors, *forged))):
        status, body = await gw.get("maria", f"/api/v1/inbox?state=waiting&cursor={bad}")
        assert (status, body["error"]["code"]) == (400, "invalid_request"), bad
    # A position in one list means nothing in another's order.
    status, body = await gw.get("maria", f"/api/v1/inbox?state=closed&cursor={seen_cursor}")
    assert (status, body["error"]["code"]) == (400, "invalid_request")


async def test_a_long_poll_is_answered_at_once_when_the_node_stops(gw: Gateway) -> None:
    """README audit: `GET /api/v1/events?wait=60` held a node's shutdown until its wait ran
    out. Once the node is stopping, a long poll (in flight or arriving) is answered at once
    with what there is: nothing new."""
    _, first = await gw.get("crm", "/api/v1/events")
    after = f"&after={first['cursor']}" if first["cursor"] else ""
    poll = asyncio.create_task(gw.get("crm", f"/api/v1/events?wait=60{after}"))
    await gw.client.app.shutdown()  # what SIGTERM starts with: the node is stopping
    async with asyncio.timeout(10):  # not the 60 s it asked to wait
        status, page = await poll
    assert (status, page["events"]) == (200, [])


async def test_queue_counts_with_mine_count_what_the_inbox_lists_with_mine(gw: Gateway) -> None:
    """Browser audit: with "only mine" the inbox's tabs still counted the whole team (Active
    2 while the list showed 1). `mine=1` adds the agent's own counts beside the team's."""
    ids = [await waiting_conversation(gw, "Hola", name) for name in ("uno", "dos", "tres")]
    assert (await gw.post("maria", f"/api/v1/conversations/{ids[0]}/accept"))[0] == 200
    assert (await gw.post("jose", f"/api/v1/conversations/{ids[1]}/accept"))[0] == 200
    status, body = await gw.get("maria", "/api/v1/queues?mine=1")
    assert status == 200
    (support,) = [q for q in body["queues"] if q["name"] == "support"]
    assert support["counts"] == {
        "waiting": 1,
        "active": 2,
        "pending": 0,
        "inactive": 0,
        "closed": 0,
    }
    # Open states only: an agent's inactive and closed ones are their whole history.
    assert support["mine"] == {"waiting": 0, "active": 1, "pending": 0}
    for state in ("waiting", "active"):
        _, listed = await gw.get("maria", f"/api/v1/inbox?state={state}&mine=1&queue=support")
        assert len(listed["conversations"]) == support["mine"][state]
    status, body = await gw.get("maria", "/api/v1/queues")
    assert status == 200 and all("mine" not in q for q in body["queues"])
    status, body = await gw.get("maria", "/api/v1/queues?mine=perhaps")
    assert status == 400 and body["error"]["message"] == "mine must be true or false"
