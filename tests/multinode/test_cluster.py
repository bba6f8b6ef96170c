"""Three `gateway serve` processes on one Redis behave as one gateway (DESIGN section 8).

Every check goes through the nodes' HTTP and WebSocket endpoints: a conversation arriving on
one node is seen live on another, accept races and automatic distribution hold across nodes,
deadlines fire once, presence is cluster-wide, and a node killed with SIGKILL is reaped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.redis import RedisStore
from tests.multinode.conftest import (
    AGENTS,
    GRACE_SECONDS,
    Cluster,
    Visitor,
    auth,
    collect_events,
    end_cursor,
    open_stream,
    receive,
    start_cluster,
)
from tests.store.redis_server import RedisServer

# Node start-up (importing the gateway) dominates: ~45 s for the module on a loaded machine.
pytestmark = pytest.mark.slow


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def changes(events: list[dict[str, Any]], change: str, ids: set[str]) -> list[str]:
    """Conversation ids of `conversation.updated` events with that change, in log order."""
    return [
        e["conversation"]["id"]
        for e in events
        if e["type"] == "conversation.updated"
        and e.get("change") == change
        and e["conversation"]["id"] in ids
    ]


async def test_conversation_on_node_a_is_live_for_agent_on_node_b(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b, c = cluster.nodes[:3]
    ws = await open_stream(http, b, "bob")
    visitor = await Visitor.open(http, a, "Live")
    ack = await visitor.say(a, "Hola from A")
    created = await receive(
        ws,
        lambda f: (
            f["type"] == "conversation.created"
            and f["conversation"]["contact"]["display_name"] == "Live"
        ),
    )
    conversation_id = created["conversation"]["id"]
    received = await receive(ws, lambda f: f["type"] == "message.received")
    assert received["message"]["id"] == ack["message"]["id"]
    await ws.close()
    # Reconnecting elsewhere with the last cursor catches up on what happened meanwhile.
    await visitor.say(c, "written through C while bob was away")
    ws = await open_stream(http, a, "bob", after=received["cursor"])
    missed = await receive(
        ws,
        lambda f: f["type"] == "message.received" and f["conversation"]["id"] == conversation_id,
    )
    assert missed["message"]["text"] == "written through C while bob was away"
    await ws.close()


async def test_typing_crosses_nodes(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """Typing is not stored, yet an agent on node B sees a visitor typing on node A."""
    a, b = cluster.nodes[:2]
    ws = await open_stream(http, b, "bob")
    visitor = await Visitor.open(http, a, "Typist")
    await visitor.say(a, "hello")
    chat = await http.ws_connect(f"{a.base}/webchat/site/ws?token={visitor.token}")
    await chat.send_json({"type": "typing"})
    typing = await receive(ws, lambda f: f["type"] == "conversation.typing")
    assert typing["change"] == "visitor" and typing["cursor"] is None
    assert typing["conversation"]["contact"]["display_name"] == "Typist"
    await chat.close()
    await ws.close()


async def test_accept_race_across_nodes_has_one_winner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    nodes = cluster.nodes[:3]
    visitor = await Visitor.open(http, nodes[0], "Race")
    await visitor.say(nodes[1], "who takes me?")
    async with http.get(
        f"{nodes[2].base}/api/v1/inbox?state=waiting&queue=support", headers=auth("bob")
    ) as resp:
        waiting = (await resp.json())["conversations"]
    conversation_id = next(c["id"] for c in waiting if c["contact"]["display_name"] == "Race")
    racers = ["maria", "jose", "bob", "carl"]

    async def accept(i: int, agent: str) -> tuple[str, int]:
        node = nodes[i % len(nodes)]
        async with http.post(
            f"{node.base}/api/v1/conversations/{conversation_id}/accept", headers=auth(agent)
        ) as resp:
            return agent, resp.status

    # Each agent tries twice, through different nodes: one agent wins (their own second try
    # succeeds too, changing nothing: accept is idempotent for the holder); every try of the
    # three others is a 409.
    results = await asyncio.gather(*(accept(i, a) for i, a in enumerate(racers * 2)))
    winners = {agent for agent, status in results if status == 200}
    assert len(winners) == 1
    assert all(status == 409 for agent, status in results if agent not in winners)
    assert sum(status == 409 for _, status in results) >= len(racers * 2) - 2


async def test_automatic_distribution_never_exceeds_max_active_across_nodes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    nodes = cluster.nodes[:3]
    cursor = await end_cursor(http, nodes[0])
    streams = [await open_stream(http, nodes[0], "d1"), await open_stream(http, nodes[1], "d2")]
    visitors = [await Visitor.open(http, nodes[i % 3], f"Auto{i}") for i in range(8)]
    await asyncio.gather(
        *(v.say(nodes[(i + 1) % 3], f"auto please {i}") for i, v in enumerate(visitors))
    )
    capacity = AGENTS["d1"][1] + AGENTS["d2"][1]
    events = await collect_events(
        http,
        nodes[2],
        cursor,
        lambda evs: sum(e.get("change") == "assigned" for e in evs) >= capacity,
        timeout=20,
    )
    assigned = Counter(e["conversation"]["agent"] for e in events if e.get("change") == "assigned")
    assert assigned == {"d1": 1, "d2": 2}
    for agent in ("d1", "d2"):
        async with http.get(
            f"{nodes[1].base}/api/v1/inbox?state=active&mine=1", headers=auth(agent)
        ) as resp:
            assert len((await resp.json())["conversations"]) == AGENTS[agent][1]
    async with http.get(
        f"{nodes[0].base}/api/v1/inbox?state=waiting&queue=auto", headers=auth("d1")
    ) as resp:
        assert len((await resp.json())["conversations"]) == 8 - capacity
    for ws in streams:
        await ws.close()


async def test_each_due_deadline_fires_once_across_nodes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """`quick` has no_agent_timeout 1s and its queue has nobody online: all go inactive."""
    nodes = cluster.nodes[:3]
    cursor = await end_cursor(http, nodes[0])
    visitors = [await Visitor.open(http, nodes[i % 3], f"Q{i}", "quick") for i in range(9)]
    acks = await asyncio.gather(*(v.say(nodes[i % 3], "anyone?") for i, v in enumerate(visitors)))
    assert len(acks) == 9
    created = await collect_events(
        http,
        nodes[1],
        cursor,
        lambda evs: sum(e["type"] == "conversation.created" for e in evs) >= 9,
        timeout=10,
    )
    ids = {e["conversation"]["id"] for e in created if e["type"] == "conversation.created"}
    assert len(ids) == 9
    events = await collect_events(
        http,
        nodes[2],
        cursor,
        lambda evs: len(set(changes(evs, "inactive", ids))) == 9,
        timeout=20,
    )
    fired = changes(events, "inactive", ids)
    assert sorted(fired) == sorted(ids)  # each exactly once, whichever node fired it
    reasons = {
        e["conversation"]["inactive_reason"]
        for e in events
        if e.get("change") == "inactive" and e["conversation"]["id"] in ids
    }
    assert reasons == {"no_agent_available"}
    async with http.get(
        f"{nodes[0].base}/api/v1/inbox?state=inactive&queue=lonely", headers=auth("lina")
    ) as resp:
        inactive = {c["id"]: c for c in (await resp.json())["conversations"]}
    assert ids <= inactive.keys()


async def test_presence_is_cluster_wide(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """Closing pia's socket on B leaves her online (A still holds one): no grace, nothing
    pending. The grace starts only when her last socket, on A, closes."""
    a, b, _ = cluster.nodes[:3]
    visitor = await Visitor.open(http, a, "Presence")
    await visitor.say(a, "hello pia")
    on_a = await open_stream(http, a, "pia")
    on_b = await open_stream(http, b, "pia")
    async with http.get(
        f"{b.base}/api/v1/inbox?state=waiting&queue=support", headers=auth("pia")
    ) as resp:
        waiting = (await resp.json())["conversations"]
    conversation_id = next(c["id"] for c in waiting if c["contact"]["display_name"] == "Presence")
    async with http.post(
        f"{b.base}/api/v1/conversations/{conversation_id}/accept", headers=auth("pia")
    ) as resp:
        assert resp.status == 200
    cursor = await end_cursor(http, a)
    await on_b.close()
    quiet = await collect_events(
        http,
        a,
        cursor,
        lambda evs: bool(changes(evs, "agent_offline", {conversation_id})),
        timeout=GRACE_SECONDS + 1,
    )
    assert changes(quiet, "agent_offline", {conversation_id}) == []
    closed_at = time.monotonic()
    await on_a.close()
    events = await collect_events(
        http,
        b,
        cursor,
        lambda evs: bool(changes(evs, "agent_offline", {conversation_id})),
        timeout=GRACE_SECONDS + 10,
    )
    assert changes(events, "agent_offline", {conversation_id}) == [conversation_id]
    assert time.monotonic() - closed_at >= GRACE_SECONDS - 0.2


async def test_sigkilled_node_is_reaped_and_its_agents_grace_starts(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    (doomed,) = cluster.start(1)
    a = cluster.nodes[0]
    visitor = await Visitor.open(http, a, "Doomed")
    await visitor.say(doomed, "hello kai")
    async with http.get(
        f"{a.base}/api/v1/inbox?state=waiting&queue=support", headers=auth("kai")
    ) as resp:
        waiting = (await resp.json())["conversations"]
    conversation_id = next(c["id"] for c in waiting if c["contact"]["display_name"] == "Doomed")
    ws = await open_stream(http, doomed, "kai")
    async with http.post(
        f"{a.base}/api/v1/conversations/{conversation_id}/accept", headers=auth("kai")
    ) as resp:
        assert resp.status == 200
    cursor = await end_cursor(http, a)
    doomed.kill()
    killed_at = time.monotonic()
    events = await collect_events(
        http,
        a,
        cursor,
        lambda evs: bool(changes(evs, "agent_offline", {conversation_id})),
        timeout=20,
    )
    assert changes(events, "agent_offline", {conversation_id}) == [conversation_id]
    # Reaped after the heartbeat TTL (2 s here), then the whole grace.
    assert time.monotonic() - killed_at >= GRACE_SECONDS
    await ws.close()
    # A visitor message arriving through a survivor still works, and so do deadlines: the
    # scheduler of the dead node held nothing the others cannot fire (next test).
    await visitor.say(a, "still there?")


async def test_deadlines_leased_by_a_dead_node_still_fire(
    cluster: Cluster, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """A node that claimed deadlines and died before handling them: the test plays that node
    through the store itself (claiming early, with an hour-long lease) and then goes silent.
    The live nodes reap it after its heartbeat TTL and fire the deadlines, once each."""
    nodes = cluster.nodes[:3]
    cursor = await end_cursor(http, nodes[0])
    visitors = [await Visitor.open(http, nodes[i], f"L{i}", "quick") for i in range(3)]
    await asyncio.gather(*(v.say(nodes[i], "lease me") for i, v in enumerate(visitors)))
    created = await collect_events(
        http,
        nodes[0],
        cursor,
        lambda evs: sum(e["type"] == "conversation.created" for e in evs) >= 3,
        timeout=10,
    )
    ids = {e["conversation"]["id"] for e in created if e["type"] == "conversation.created"}
    ghost = RedisStore.from_url(redis_server.url_for(1))
    await ghost.open()
    try:
        now = datetime.now(UTC)
        await ghost.node_heartbeat("ghost", now, timedelta(seconds=1))
        claimed = await ghost.claim_due(
            now + timedelta(seconds=1), 100, timedelta(hours=1), node="ghost"
        )
    finally:
        await ghost.close()
    targets = {d.target.removeprefix("conversation:") for d in claimed if d.kind == "no_agent"}
    assert ids <= targets  # the ghost got them before any live node could
    events = await collect_events(
        http,
        nodes[1],
        cursor,
        lambda evs: len(set(changes(evs, "inactive", ids))) == 3,
        timeout=20,
    )
    assert sorted(changes(events, "inactive", ids)) == sorted(ids)


async def test_acknowledged_messages_survive_redis_sigkill(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Two nodes on their own redis-server: kill -9 Redis while visitors are writing, restart
    it on the same directory, and every message a node acknowledged (201) is still there."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    cluster = start_cluster(server, 0, tmp_path, 2)
    try:
        nodes = cluster.nodes
        visitors = [await Visitor.open(http, nodes[i % 2], f"K{i}") for i in range(10)]
        acknowledged: list[tuple[Visitor, str]] = []
        enough = asyncio.Event()
        stop = False

        async def write(i: int, visitor: Visitor) -> None:
            n = 0
            while not stop:
                n += 1
                try:
                    ack = await visitor.say(nodes[(i + n) % 2], f"m{n}")
                except (AssertionError, aiohttp.ClientError):
                    continue  # not acknowledged: a real client retries with the same client_id
                acknowledged.append((visitor, ack["message"]["id"]))
                if len(acknowledged) >= 200:
                    enough.set()

        writers = [asyncio.create_task(write(i, v)) for i, v in enumerate(visitors)]
        await asyncio.wait_for(enough.wait(), 60)
        server.kill()
        stop = True
        await asyncio.gather(*writers)
        server.start()
        for visitor in {v for v, _ in acknowledged}:
            async with http.get(
                f"{nodes[0].base}/webchat/site/messages",
                headers={"Authorization": f"Bearer {visitor.token}"},
            ) as resp:
                assert resp.status == 200
                stored = {m["id"] for m in (await resp.json())["messages"]}
            mine = {mid for v, mid in acknowledged if v is visitor}
            assert mine <= stored
    finally:
        cluster.stop()
        server.stop()
