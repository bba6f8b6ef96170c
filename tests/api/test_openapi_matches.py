"""`GET /api/openapi.json` describes what the server really answers.

A real gateway on loopback HTTP is driven through every documented operation (successes,
refusals and a store outage); each response's status must be documented for its operation,
and every key of each JSON body (recursively, and every WebSocket frame) must be a documented
property of the schema it is answered with. A field or a status added to the code without its
line in gateway/api/openapi.py fails here.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType

from gateway.api.openapi import openapi_document
from gateway.api.serialize import conversation_json, event_json, message_json
from gateway.model import (
    Attachment,
    Contact,
    Conversation,
    Direction,
    Event,
    Message,
    Placement,
    State,
)
from plugins.webchat.adapter import visitor_message_json
from tests.api.conftest import TOKENS, Build, Gateway
from tests.store.redis_server import RedisServer

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


def _is(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, JSON_TYPES[name])


class Document:
    """The served document, and a small checker of values against its schemas: types, `const`,
    `enum`, `required`, and above all that no object has a key its schema does not list."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str, int]] = set()

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def operation(self, method: str, template: str) -> dict[str, Any]:
        path = self.doc["paths"].get(template)
        assert path is not None, f"{template} is not in the document"
        op = path.get(method.lower())
        assert op is not None, f"{method} {template} is not in the document"
        result: dict[str, Any] = op
        return result

    def problems(self, value: Any, schema: dict[str, Any], where: str) -> list[str]:
        schema = self.resolve(schema)
        if "allOf" in schema:
            merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged["properties"].update(part.get("properties", {}))
                merged["required"] += part.get("required", [])
            schema = merged
        for key in ("oneOf", "anyOf"):
            if key in schema:
                found = [self.problems(value, option, where) for option in schema[key]]
                return [] if [] in found else min(found, key=len)
        if "const" in schema and value != schema["const"]:
            return [f"{where}: {value!r} is not {schema['const']!r}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} is not one of {schema['enum']}"]
        types = schema.get("type")
        if types is not None:
            names = [types] if isinstance(types, str) else types
            if not any(_is(value, name) for name in names):
                return [f"{where}: {type(value).__name__} {value!r:.60} is not {names}"]
        out: list[str] = []
        if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
            properties = schema.get("properties", {})
            others = schema.get("additionalProperties")
            out += [f"{where}.{r}: required but missing" for r in schema.get("required", [])
                    if r not in value]  # fmt: skip
            for key, item in value.items():
                if key in properties:
                    out += self.problems(item, properties[key], f"{where}.{key}")
                elif isinstance(others, dict):
                    out += self.problems(item, others, f"{where}.{key}")
                elif others is not True:
                    out.append(f"{where}.{key}: not a documented property")
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                out += self.problems(item, schema["items"], f"{where}[{i}]")
        return out

    async def check(self, resp: ClientResponse, method: str, template: str) -> Any:
        """Assert that `resp` is documented for the operation; return its JSON body (or None)."""
        op = self.operation(method, template)
        where = f"{method} {template} -> {resp.status}"
        assert str(resp.status) in op["responses"], (
            f"{where}: undocumented status (documented: {sorted(op['responses'])});"
            f" body {(await resp.text())[:200]}"
        )
        self.seen.add((method.upper(), template, resp.status))
        documented = op["responses"][str(resp.status)].get("content", {})
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json":
            assert resp.status in (101, 204) or content_type in documented or "*/*" in documented, (
                f"{where}: content type {content_type!r}, documented {sorted(documented)}"
            )
            return None
        body = await resp.json()
        assert "application/json" in documented, f"{where}: a JSON body is not documented"
        schema = documented["application/json"]["schema"]
        problems = self.problems(body, schema, "body")
        assert not problems, f"{where}:\n" + "\n".join(problems)
        return body

    def upgraded(self, template: str) -> None:
        op = self.operation("GET", template)
        assert "101" in op["responses"], f"GET {template}: 101 is not documented"
        self.seen.add(("GET", template, 101))

    def frame(self, template: str, frame: Any, key: str = "x-frames") -> None:
        schema = self.operation("GET", template)[key]
        problems = self.problems(frame, schema, "frame")
        assert not problems, f"{template} frame {frame}:\n" + "\n".join(problems)


async def frames_until(
    ws: ClientWebSocketResponse, wanted: set[str], out: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Append every frame that arrives to `out` until one of each `wanted` type is among them."""
    async with asyncio.timeout(10):
        while not wanted <= {frame["type"] for frame in out}:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            out.append(json.loads(msg.data))
    return out


WC = "/webchat/{channel}"
CONV = "/api/v1/conversations/{id}"
ALLOWED = "https://shop.example.com"
EVIL = "https://evil.example"


async def _ops(gw: Gateway, doc: Document) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/api/openapi.json"):
        await doc.check(await gw.client.get(path), "GET", path)


async def _webchat(gw: Gateway, doc: Document) -> tuple[str, str, ClientWebSocketResponse]:
    """A visitor's session, messages and socket; returns their token, id and open socket."""
    c = gw.client
    await doc.check(await c.get("/webchat/widget.js"), "GET", "/webchat/widget.js")
    await doc.check(await c.get("/webchat/site/demo"), "GET", WC + "/demo")
    session = "/webchat/site/session"
    opened = await doc.check(
        await c.post(session, json={"display_name": "Ana"}), "POST", WC + "/session"
    )
    token, visitor_id = opened["token"], opened["visitor_id"]
    for body, status in [
        ({"token": token}, 201),
        ({"token": "forged"}, 401),
        (b"{", 400),
        ([1], 400),
    ]:
        kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        resp = await c.post(session, **kw)
        assert resp.status == status
        await doc.check(resp, "POST", WC + "/session")
    resp = await c.post(session, json={}, headers={"Origin": EVIL})
    assert resp.status == 403
    await doc.check(resp, "POST", WC + "/session")
    for path, method in [(session, "POST"), ("/webchat/site/messages", "GET")]:
        for origin, status in [(ALLOWED, 204), (EVIL, 403)]:
            headers = {"Origin": origin, "Access-Control-Request-Method": method}
            resp = await c.options(path, headers=headers)
            assert resp.status == status
            await doc.check(resp, "OPTIONS", WC + path.removeprefix("/webchat/site"))

    messages = "/webchat/site/messages"
    bearer = {"Authorization": f"Bearer {token}"}
    sends: list[tuple[dict[str, str], Any, int]] = [
        (bearer, {"text": "Hola", "client_id": "u-1"}, 201),
        (bearer, {"text": "Hola", "client_id": "u-1"}, 201),  # the resend: the same ack
        (bearer, {"text": "Hola"}, 400),
        (bearer, b"nope", 400),
        ({}, {"text": "Hola", "client_id": "u-2"}, 401),
        ({**bearer, "Origin": EVIL}, {"text": "Hola", "client_id": "u-2"}, 403),
        (bearer, b"x" * 2_000_000, 413),
    ]
    for headers, body, status in sends:
        kw = {"data": body} if isinstance(body, bytes) else {"json": body}
        resp = await c.post(messages, headers=headers, **kw)
        assert resp.status == status, await resp.text()
        await doc.check(resp, "POST", WC + "/messages")
    for query, headers, status in [
        ("", bearer, 200),
        ("?after=0", bearer, 200),
        ("?after=m_nope", bearer, 400),
        ("", {}, 401),
        ("", {**bearer, "Origin": EVIL}, 403),
    ]:
        resp = await c.get(messages + query, headers=headers)
        assert resp.status == status
        await doc.check(resp, "GET", WC + "/messages")

    for query, headers, status in [
        ("?token=forged", {}, 401),
        (f"?token={token}&after=m_nope", {}, 400),
        (f"?token={token}", {}, 400),  # not a WebSocket upgrade
        (f"?token={token}", {"Origin": EVIL}, 403),
    ]:
        resp = await c.get("/webchat/site/ws" + query, headers=headers)
        assert resp.status == status
        await doc.check(resp, "GET", WC + "/ws")
    ws = await c.ws_connect(f"/webchat/site/ws?token={token}&after=0")
    doc.upgraded(WC + "/ws")
    return token, visitor_id, ws


async def _agents(gw: Gateway, doc: Document, visitor_id: str) -> str:
    """The agent API from inbox to close; returns the conversation's id."""
    c = gw.client
    for path in ("/api/v1/me", "/api/v1/queues", "/api/v1/agents"):
        await doc.check(await c.get(path, headers=gw.auth("maria")), "GET", path)
        await doc.check(await c.get(path), "GET", path)
    await doc.check(await c.get("/api/v1/me", headers=gw.auth("crm")), "GET", "/api/v1/me")
    for query in ("?mine=1", "?mine=perhaps"):
        resp = await c.get("/api/v1/queues" + query, headers=gw.auth("maria"))
        await doc.check(resp, "GET", "/api/v1/queues")

    inbox = None
    for agent, query, status in [
        ("maria", "?state=waiting", 200),
        ("maria", "?state=active&mine=1&limit=5", 200),
        ("maria", "?state=bogus", 400),
        ("maria", "?limit=0", 400),
        ("maria", "?limit=%C2%B2", 400),  # superscript two: a digit to isdigit, not to int
        ("maria", "?queue=nope", 404),
        ("ana", "?queue=support", 403),
    ]:
        resp = await c.get("/api/v1/inbox" + query, headers=gw.auth(agent))
        assert resp.status == status
        inbox = inbox or await doc.check(resp, "GET", "/api/v1/inbox")
        await doc.check(resp, "GET", "/api/v1/inbox")
    await doc.check(await c.get("/api/v1/inbox"), "GET", "/api/v1/inbox")
    assert inbox is not None
    [conv_id] = [
        str(x["id"]) for x in inbox["conversations"] if x["contact"]["address"] == visitor_id
    ]
    path = f"/api/v1/conversations/{conv_id}"

    for agent, target, status in [
        ("maria", path, 200),
        ("maria", "/api/v1/conversations/c_nope", 404),
        ("ana", path, 403),
    ]:
        resp = await c.get(target, headers=gw.auth(agent))
        assert resp.status == status
        await doc.check(resp, "GET", CONV)
    await doc.check(await c.get(path), "GET", CONV)

    async def post(agent: str | None, action: str, status: int, **kw: Any) -> Any:
        headers = {**(gw.auth(agent) if agent else {}), **kw.pop("headers", {})}
        resp = await c.post(f"{path}{action}", headers=headers, **kw)
        assert resp.status == status, await resp.text()
        return await doc.check(resp, "POST", CONV + action)

    await post("jose", "/typing", 403)
    await post("maria", "/accept", 200)
    await post("jose", "/accept", 409)
    await post(None, "/accept", 401)
    await post("maria", "/typing", 204)
    key = {"Idempotency-Key": "k-1"}
    await post("maria", "/messages", 202, json={"text": "Buenas"}, headers=key)
    await post("maria", "/messages", 202, json={"text": "Buenas"}, headers=key)
    await post("maria", "/messages", 422, json={"text": "Otra"}, headers=key)
    await post("maria", "/messages", 202, json={"text": "Hi", "html": "<b>Hi</b>"})
    await post("maria", "/messages", 400, json={})
    await post(
        "maria", "/messages", 400, json={"text": "x", "template": {"name": "t", "language": "es"}}
    )
    await post("maria", "/messages", 400, json={"attachments": [{"url": "x", "media_id": "1"}]})
    await post("maria", "/messages", 413, data=b"x" * 2_000_000)
    await post("jose", "/messages", 403, json={"text": "not mine"})
    await post("maria", "/pending", 200)
    await post("maria", "/pending", 409)
    await post("maria", "/resume", 200)
    await post("maria", "/transfer", 400, json={})
    await post("maria", "/transfer", 413, data=b"x" * 2_000_000)
    await post("maria", "/transfer", 200, json={"queue": "sales"})
    await post("maria", "/accept", 200)
    await post("maria", "/close", 200)
    await post("maria", "/close", 409)
    await post("maria", "/messages", 409, json={"text": "too late"})
    resp = await c.post("/api/v1/conversations/c_nope/accept", headers=gw.auth("maria"))
    await doc.check(resp, "POST", CONV + "/accept")

    detail = await (await c.get(path, headers=gw.auth("maria"))).json()
    message_id = detail["messages"][0]["id"]
    for index in ("0", "%C2%B2"):
        attachment = f"{path}/messages/{message_id}/attachments/{index}"
        resp = await c.get(attachment, headers=gw.auth("maria"))
        assert resp.status == 404
        await doc.check(resp, "GET", CONV + "/messages/{message_id}/attachments/{index}")
    return conv_id


async def _events(gw: Gateway, doc: Document) -> None:
    c = gw.client
    await gw.settle()
    cursor = None
    for token, query, status in [
        ("crm", "", 200),
        ("maria", "?limit=2", 200),
        ("crm", "?after=bogus", 400),
        ("crm", "?wait=61", 400),
        ("crm", "?wait=%E2%91%A0", 400),  # circled one
        ("crm", "?limit=%D9%A1", 400),  # Arabic-Indic one
        (None, "", 401),
    ]:
        headers = {"Authorization": f"Bearer {TOKENS[token]}"} if token else {}
        resp = await c.get("/api/v1/events" + query, headers=headers)
        assert resp.status == status
        body = await doc.check(resp, "GET", "/api/v1/events")
        if status == 200 and token == "maria":
            cursor = body["cursor"]
    resp = await c.get(f"/api/v1/events?after={cursor}", headers=gw.auth("crm"))
    assert resp.status == 200
    await doc.check(resp, "GET", "/api/v1/events")


async def test_every_response_and_frame_is_documented(gw: Gateway) -> None:
    resp = await gw.client.get("/api/openapi.json")
    doc = Document(await resp.json())
    assert doc.doc == json.loads(json.dumps(openapi_document()))
    await _ops(gw, doc)
    token, visitor_id, visitor_ws = await _webchat(gw, doc)
    for path in ("/api/v1/stream", "/api/v1/stream?after=bogus"):
        resp = await gw.client.get(path, headers=gw.auth("maria"))
        assert resp.status == 400  # no upgrade; a cursor the log never issued
        await doc.check(resp, "GET", "/api/v1/stream")
    await doc.check(await gw.client.get("/api/v1/stream"), "GET", "/api/v1/stream")
    agent_ws = await gw.client.ws_connect("/api/v1/stream?access_token=tok-maria")
    doc.upgraded("/api/v1/stream")
    await agent_ws.send_str("ping")

    agent_frames: list[dict[str, Any]] = []
    visitor_frames: list[dict[str, Any]] = []
    await visitor_ws.send_json({"type": "typing"})
    await visitor_ws.send_json({"type": "message", "text": "¿Hay alguien?", "client_id": "u-3"})
    await visitor_ws.send_json({"type": "message", "text": ""})  # an error frame
    # The visitor's typing reaches the agent before the accept (typing shows on open ones).
    await frames_until(agent_ws, {"hello", "pong", "conversation.typing"}, agent_frames)
    await _agents(gw, doc, visitor_id)
    await _events(gw, doc)
    await gw.settle()

    wanted_agent = {"conversation.updated", "message.received", "message.sent"}
    for frame in await frames_until(agent_ws, wanted_agent, agent_frames):
        doc.frame("/api/v1/stream", frame)
    wanted_visitor = {"message", "ack", "typing", "conversation", "error"}
    for frame in await frames_until(visitor_ws, wanted_visitor, visitor_frames):
        doc.frame(WC + "/ws", frame)
    async with asyncio.timeout(10):
        while not any(f["type"] == "message" and f["message"]["direction"] == "out"
                      for f in visitor_frames):  # fmt: skip
            visitor_frames.append(json.loads((await visitor_ws.receive()).data))
            doc.frame(WC + "/ws", visitor_frames[-1])
    reply = next(
        f["message"]
        for f in visitor_frames
        if f["type"] == "message" and f["message"]["direction"] == "out"
    )
    for frame in ({"type": "ping"}, {"type": "read", "message_id": reply["id"]}):
        doc.frame(WC + "/ws", frame, key="x-client-frames")
        await visitor_ws.send_json(frame)
    for frame in await frames_until(visitor_ws, {"pong"}, visitor_frames):
        doc.frame(WC + "/ws", frame)
    read = "/webchat/site/read"
    bearer = {"Authorization": f"Bearer {token}"}
    for headers, body, status in [
        (bearer, {"message_id": reply["id"]}, 204),
        (bearer, {"message_id": "m_nope"}, 400),
        (bearer, b"{", 400),
        ({}, {"message_id": reply["id"]}, 401),
        ({**bearer, "Origin": EVIL}, {"message_id": reply["id"]}, 403),
    ]:
        kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        resp = await gw.client.post(read, headers=headers, **kw)
        assert resp.status == status, await resp.text()
        await doc.check(resp, "POST", WC + "/read")
    for origin, status in [(ALLOWED, 204), (EVIL, 403)]:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        resp = await gw.client.options(read, headers=headers)
        assert resp.status == status
        await doc.check(resp, "OPTIONS", WC + "/read")
    await agent_ws.close()
    await visitor_ws.close()

    # Every documented operation was driven at least once, and every status the audit found
    # missing is now both documented and seen.
    driven = {(method, path) for method, path, _ in doc.seen}
    for path, item in doc.doc["paths"].items():
        for method in item:
            assert (method.upper(), path) in driven, f"{method.upper()} {path} was not exercised"
    assert {
        ("POST", CONV + "/messages", 422),
        ("GET", "/api/v1/inbox", 404),
        ("GET", "/api/v1/stream", 400),
    } <= doc.seen


async def test_answers_during_a_store_outage_are_documented(
    build: Build, redis_alone: RedisServer
) -> None:
    """Redis really down (killed): every endpoint that needs the store answers a documented
    503; the ops endpoints say so in their documented shapes."""
    gw = await build()
    doc = Document(await (await gw.client.get("/api/openapi.json")).json())
    session = await gw.client.post("/webchat/site/session", json={"display_name": "Down"})
    token = (await session.json())["token"]
    redis_alone.kill()

    c = gw.client
    maria = gw.auth("maria")
    for path in ("/api/v1/queues", "/api/v1/agents", "/api/v1/inbox", "/api/v1/events"):
        resp = await c.get(path, headers=maria)
        assert resp.status == 503, path
        await doc.check(resp, "GET", path)
    handshake = {  # a real WebSocket handshake, refused before the upgrade
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    resp = await c.get("/api/v1/stream?access_token=tok-maria", headers=handshake)
    assert resp.status == 503
    await doc.check(resp, "GET", "/api/v1/stream")
    resp = await c.get("/api/v1/conversations/c_1", headers=maria)
    assert resp.status == 503
    await doc.check(resp, "GET", CONV)
    for action, body in [
        ("/accept", None),
        ("/pending", None),
        ("/resume", None),
        ("/close", None),
        ("/transfer", {"queue": "sales"}),
        ("/typing", None),
        ("/messages", {"text": "x"}),
    ]:
        resp = await c.post(f"/api/v1/conversations/c_1{action}", json=body, headers=maria)
        assert resp.status == 503, action
        await doc.check(resp, "POST", CONV + action)
    bearer = {"Authorization": f"Bearer {token}"}
    resp = await c.post(
        "/webchat/site/messages", json={"text": "x", "client_id": "u-9"}, headers=bearer
    )
    assert resp.status == 503
    await doc.check(resp, "POST", WC + "/messages")
    resp = await c.get("/webchat/site/messages?after=0", headers=bearer)
    assert resp.status == 503
    await doc.check(resp, "GET", WC + "/messages")
    for path in ("/readyz", "/metrics", "/healthz"):
        await doc.check(await c.get(path), "GET", path)
    assert ("GET", "/readyz", 503) in doc.seen


def _fields(name: str) -> set[str]:
    schema = openapi_document()["components"]["schemas"][name]
    return set(schema["properties"])


def test_schemas_list_exactly_what_the_serializers_write() -> None:
    """Both ways: no undocumented field, and no documented field the API never writes."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    contact = Contact("+5511999990000", "Ana")
    conversation = Conversation(
        "c_1", "wa", "whatsapp", "twilio", contact, State.WAITING, "support", now, now, now
    )
    message = Message(
        "m_1", "c_1", "wa", "whatsapp", "twilio", Direction.IN, "text", "Hola", now, now,
        attachments=(Attachment("image", url="https://x"),), contact=contact,
    )  # fmt: skip
    shown = conversation_json(conversation, now, {conversation.channel})
    assert set(shown) == _fields("Conversation")
    assert set(message_json(message)) == _fields("Message")
    assert set(message_json(message, raw=True)) == _fields("EventMessage")
    assert set(message_json(message)["attachments"][0]) == _fields("Attachment")
    assert set(visitor_message_json(message)) == _fields("VisitorMessage")
    event = Event("message.received", now, conversation, message, "x", "1", Placement("s", "a"))
    assert set(event_json(event, now, ())) == _fields("Event")
