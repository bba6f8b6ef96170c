"""Who reads what of `GET /api/v1/events`: integrators everything, agents their own.

DESIGN.md section 1: an agent previews only conversations of their queues; the event log must
not be a way around that. Integrators (config `integrators`) read every event.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.api.conftest import TOKENS, Gateway


async def conversation_of(gw: Gateway, name: str, text: str) -> tuple[str, str]:
    """A visitor writes; return (visitor id, conversation id) from the integrator's log."""
    visitor = await gw.visitor(name)
    await gw.visitor_says(visitor["token"], text, f"c-{name}-{text}")
    _, page = await gw.get("crm", "/api/v1/events?limit=1000")
    ids = {
        e["conversation"]["id"]
        for e in page["events"]
        if e["conversation"]["contact"]["address"] == visitor["visitor_id"]
    }
    assert len(ids) == 1
    return visitor["visitor_id"], ids.pop()


def conversations_in(events: list[dict[str, Any]]) -> set[str]:
    return {e["conversation"]["id"] for e in events}


async def test_agents_read_only_their_conversations_integrators_read_all(gw: Gateway) -> None:
    _, support = await conversation_of(gw, "Bea", "Hola")  # routed to support
    _, sales = await conversation_of(gw, "Caio", "price?")  # routed to sales
    status, everything = await gw.get("crm", "/api/v1/events")
    assert status == 200 and conversations_in(everything["events"]) == {support, sales}
    status, maria = await gw.get("maria", "/api/v1/events")  # on support and sales
    assert status == 200 and maria == everything
    status, ana = await gw.get("ana", "/api/v1/events")  # on sales only
    assert status == 200 and conversations_in(ana["events"]) == {sales}
    # The cursor is the last event scanned: Ana resumes after the log's end, not before it.
    assert ana["cursor"] == everything["cursor"]
    # Page by page, Ana never gets a support event and always moves forward.
    cursor, seen = "", []
    while True:
        _, page = await gw.get("ana", "/api/v1/events", params={"after": cursor, "limit": 1})
        if page["cursor"] == (cursor or None):
            break
        seen += page["events"]
        cursor = page["cursor"]
    assert conversations_in(seen) == {sales} and cursor == everything["cursor"]
    # The preview rule and the log agree.
    status, _ = await gw.get("ana", f"/api/v1/conversations/{support}")
    assert status == 403


async def test_a_long_poll_waits_past_events_the_agent_may_not_see(gw: Gateway) -> None:
    await conversation_of(gw, "Bea", "Hola")
    _, start = await gw.get("crm", "/api/v1/events")
    await conversation_of(gw, "Dora", "Hola")  # support: not Ana's
    # Ana's poll first finds only Dora's events: it must keep waiting, not answer empty.
    poll = asyncio.create_task(
        gw.get("ana", "/api/v1/events", params={"after": start["cursor"], "wait": 30})
    )
    _, sales = await conversation_of(gw, "Eva", "precio?")
    status, page = await poll
    assert status == 200 and conversations_in(page["events"]) == {sales}


async def test_an_integrator_token_opens_only_the_event_log(gw: Gateway) -> None:
    # A valid token of the wrong kind: 403 (401 would tell the integrator its token is bad).
    for path in ["/api/v1/inbox?state=waiting", "/api/v1/me", "/api/v1/stream"]:
        status, body = await gw.get("crm", path)
        assert status == 403 and body["error"]["code"] == "forbidden", path
        assert "GET /api/v1/events only" in body["error"]["message"]
    status, _ = await gw.get("crm", "/api/v1/events")
    assert status == 200


async def test_the_change_that_takes_a_conversation_away_reaches_who_saw_it(
    gw: Gateway,
) -> None:
    """Ana (sales only) gets a sales conversation assigned, then hands it to support: she
    gets that event, saying where it was (`moved_from`), and nothing of it afterwards."""
    from tests.api.test_stream_presence import open_stream, receive

    stream = await open_stream(gw, "ana")
    _, sales = await conversation_of(gw, "Caio", "price?")
    assigned = await receive(stream, type_="conversation.updated")
    assert assigned["change"] == "assigned" and "moved_from" not in assigned
    path = f"/api/v1/conversations/{sales}"
    status, body = await gw.post("ana", f"{path}/transfer", {"queue": "support"})
    assert status == 200, body

    event = await receive(stream, type_="conversation.updated")
    assert event["change"] == "transferred"
    assert event["conversation"]["queue"] == "support"
    assert event["moved_from"] == {"queue": "sales", "agent": "ana"}
    _, page = await gw.get("ana", "/api/v1/events")
    moved = [e for e in page["events"] if e.get("change") == "transferred"]
    assert [e["moved_from"] for e in moved] == [{"queue": "sales", "agent": "ana"}]
    # From then on the conversation is out of her sight.
    assert (await gw.post("jose", f"{path}/accept"))[0] == 200
    _, later = await gw.get("ana", f"/api/v1/events?after={page['cursor']}")
    assert later["events"] == []
    _, everything = await gw.get("crm", "/api/v1/events")
    assert [e["change"] for e in everything["events"] if e.get("change")][-1] == "accepted"
    await stream.close()


async def test_a_full_page_is_rendered_whole_and_in_order(gw: Gateway) -> None:
    """A page is rendered in chunks, yielding to other requests between them: every event of
    it is there once, in log order, and the cursor is the last one's."""
    for i in range(55):  # two events each (conversation.created, message.received)
        visitor = await gw.visitor(f"R{i}")
        await gw.visitor_says(visitor["token"], f"hola {i}", f"r-{i}")
    status, whole = await gw.get("crm", "/api/v1/events?limit=1000")
    assert status == 200 and len(whole["events"]) > 100
    cursors = [e["cursor"] for e in whole["events"]]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert whole["cursor"] == cursors[-1]
    _, first = await gw.get("crm", "/api/v1/events?limit=100")
    _, rest = await gw.get("crm", f"/api/v1/events?limit=1000&after={first['cursor']}")
    assert [e["cursor"] for e in first["events"] + rest["events"]] == cursors


async def test_a_reader_behind_the_retention_is_told_it_missed_events(gw: Gateway) -> None:
    """`gap` (events API) and the stream's hello say when retention deleted unread events."""
    await conversation_of(gw, "Bea", "Hola")
    _, before = await gw.get("crm", "/api/v1/events")
    first, last = before["events"][0]["cursor"], before["cursor"]
    assert before["gap"] is False
    # Past every event on either store's time (SQLite: the gateway's clock; Redis: its own).
    cut = max(gw.clock.now(), datetime.now(UTC)) + timedelta(days=1)
    assert await gw.runtime.store.prune_events(cut, 1000) == len(before["events"])
    await conversation_of(gw, "Caio", "Hola")
    for after, missed in ((None, True), (first, True), (last, False)):
        status, page = await gw.get("crm", "/api/v1/events", params={"after": after or ""})
        assert status == 200 and page["gap"] is missed, after
        assert len(page["events"]) == 2  # the new conversation's, kept
        query = f"?access_token={TOKENS['maria']}" + (f"&after={after}" if after else "")
        async with gw.client.ws_connect(f"/api/v1/stream{query}") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            assert hello["gap"] is (missed and after is not None)  # no after: no replay at all
