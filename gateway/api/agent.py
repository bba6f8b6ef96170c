"""The agent REST API (DESIGN section 5): inbox, preview, accept, reply, pending, resume, close,
transfer. Handlers stay thin: parse, authenticate, call `Actions`/`Outbound`, shape the answer.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from gateway.api.events import RENDER_CHUNK
from gateway.api.http import json_response, read_json
from gateway.api.media import MIME_TYPE
from gateway.api.serialize import conversation_json, message_json
from gateway.appkeys import RUNTIME
from gateway.errors import InvalidInput, NotFound, TransitionError
from gateway.model import OPEN_STATES, Attachment, Event, State
from gateway.outbound import OutboundRequest
from gateway.store.base import ListPosition, list_position

routes = web.RouteTableDef()

MAX_TEXT = 4096


ParamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]
ParamText = Annotated[str, Field(max_length=1024)]


class TemplateBody(BaseModel):
    """An approved template: its variables positional (`["Ana", "#123"]`) or named
    (`{"customer": "Ana"}`); on the Cloud API, `components` (header media, button parameters)
    go to Meta as written, for what variables cannot say."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=1, max_length=32)
    params: list[ParamText] | dict[ParamName, ParamText] = Field(
        default_factory=list, max_length=50
    )
    components: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=10)


AttachmentKind = Literal["image", "audio", "video", "document", "sticker", "file"]
_KIND_OF_MIME_FAMILY: dict[str, AttachmentKind] = {
    "image": "image",
    "audio": "audio",
    "video": "video",
}


def _public_url(url: str) -> str:
    """Providers fetch an outbound attachment by its URL (and the email channel downloads it):
    only an absolute http(s) URL means anything to them; `file:` or a bare path never can."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an attachment url is an absolute http:// or https:// URL")
    return url


def _media_type(value: str | None) -> str | None:
    """`type/subtype` with optional parameters: it goes into a provider's request or a mail's
    headers, where anything else fails the send later, or worse."""
    if value is not None and not MIME_TYPE.fullmatch(value):
        raise ValueError("a mime_type is type/subtype, such as image/png")
    return value


class AttachmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: AttachmentKind | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_public_url)]
    mime_type: Annotated[str | None, AfterValidator(_media_type)] = Field(
        default=None, max_length=255
    )
    caption: str | None = Field(default=None, max_length=1024)
    filename: str | None = Field(default=None, max_length=255)

    @property
    def resolved_kind(self) -> AttachmentKind:
        """The kind given, else the one its MIME type says (an `image/jpeg` is an image, not
        a file to download), else `document`."""
        if self.kind is not None:
            return self.kind
        family = (self.mime_type or "").partition("/")[0].lower()
        return _KIND_OF_MIME_FAMILY.get(family, "document")


def _readable_text(text: str | None) -> str | None:
    """A reply a customer can read: not only blanks, and no NUL (which providers refuse and
    some clients cut the message at)."""
    if text is not None:
        if not text.strip():
            raise ValueError("text is only whitespace")
        if "\x00" in text:
            raise ValueError("text contains a NUL character")
    return text


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[
        str | None, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_readable_text)
    ] = None
    template: TemplateBody | None = None
    attachments: list[AttachmentBody] = Field(default_factory=list, max_length=30)
    html: str | None = Field(default=None, max_length=100_000)


class TransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue: str | None = None
    agent: str | None = None


def parse_body(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate a request body with its pydantic model; the 400 names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(problems) from None


def _state(value: str | None) -> State:
    try:
        return State(value or "waiting")
    except ValueError:
        allowed = ", ".join(s.value for s in State)
        raise InvalidInput(f"state must be one of {allowed}") from None


MESSAGES_PER_PAGE = 1000
"""A conversation's messages come newest first in pages of this many (at most), each page in
order; `?before=` the first of a page reads the one before it."""
MESSAGE_ID = re.compile(r"m_[0-9A-Za-z]{1,64}")


def _once(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once: `state=waiting&state=active` is ambiguous, and
    answering for the first would silently drop the second."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidInput(f"give {name} once")
    return values[0] if values else None


def _flag(request: web.Request, name: str) -> bool:
    value = (_once(request, name) or "false").lower()
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise InvalidInput(f"{name} must be true or false")
    return value in ("1", "true", "yes")


def _limit(request: web.Request, default: int = 200) -> int:
    raw = _once(request, "limit") or str(default)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise InvalidInput("limit must be a number between 1 and 1000")
    return int(raw)


@routes.get("/api/v1/me")
async def me(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    return json_response(
        {
            "id": agent.id,
            "name": agent.name,
            "queues": sorted(agent.queues),
            "max_active": agent.max_active,
            # A conversation may go to any queue: the one it belongs with may not be the
            # agent's own ("this is for Sales").
            "transfer_queues": sorted(runtime.directory.queues),
        }
    )


@routes.get("/api/v1/agents")
async def agents(request: web.Request) -> web.Response:
    """Agents who share a queue with the caller, with presence and load (transfer targets);
    with `all=1`, every agent with all their queues (a transfer may go to another queue's
    agent)."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    everyone = _flag(request, "all")
    presence = await runtime.store.presence()
    loads = await runtime.store.agent_loads()
    body = [
        {
            "id": other.id,
            "name": other.name,
            "queues": sorted(other.queues if everyone else other.queues & agent.queues),
            "online": bool(presence.get(other.id) and presence[other.id].online),
            "active": loads.get(other.id, 0),
            "max_active": other.max_active,
        }
        for other in runtime.directory.agents.values()
        if everyone or other.queues & agent.queues
    ]
    return json_response({"agents": body})


@routes.get("/api/v1/inbox")
async def inbox(request: web.Request) -> web.Response:
    """List conversations by state on the agent's queues; waiting strictly oldest first."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    state = _state(_once(request, "state"))
    queues = set(agent.queues)
    wanted = _once(request, "queue")
    if wanted is not None:
        if wanted not in runtime.directory.queues:
            raise NotFound(f"no queue named {wanted!r}")
        if wanted not in agent.queues:
            raise InvalidInput(f"agent {agent.id} is not on queue {wanted!r}", code="not_on_queue")
        queues = {wanted}
    mine = _flag(request, "mine")
    limit = _limit(request)
    # One more than asked tells whether there is a next page.
    conversations = await runtime.store.list_conversations(
        state,
        queues=queues,
        agent=agent.id if mine else None,
        limit=limit + 1,
        after=_inbox_cursor(_once(request, "cursor"), state),
    )
    page = conversations[:limit]
    next_cursor = None
    if len(conversations) > limit:
        at, conversation_id = list_position(page[-1])
        next_cursor = f"{state}.{at}.{conversation_id}"
    now, channels = runtime.clock.now(), runtime.adapters
    shown: list[dict[str, Any]] = []
    for start in range(0, len(page), RENDER_CHUNK):
        if start:
            await asyncio.sleep(0)  # let other requests run between chunks (see events.py)
        shown += [conversation_json(c, now, channels) for c in page[start : start + RENDER_CHUNK]]
    return json_response({"conversations": shown, "next_cursor": next_cursor})


INBOX_CURSOR = re.compile(r"([a-z]{1,16})\.(\d{1,18})\.(c_[0-9A-Za-z]{1,64})", re.ASCII)
"""`next_cursor` as the inbox hands it out: the state listed, the last conversation's sort
time (microseconds) and its id. Opaque to clients."""


def _inbox_cursor(raw: str | None, state: State) -> ListPosition | None:
    if raw is None:
        return None
    match = INBOX_CURSOR.fullmatch(raw)
    if match is None:
        raise InvalidInput("cursor must be the next_cursor of an earlier inbox page")
    if match.group(1) != str(state):
        # Another list's position means nothing in this one's order.
        raise InvalidInput(f"this cursor pages the {match.group(1)} list, not {state}")
    return int(match.group(2)), match.group(3)


@routes.get("/api/v1/queues")
async def queues(request: web.Request) -> web.Response:
    """The agent's queues with counts per state (what an inbox shows in its tabs); with
    `mine=1` also `mine`, the counts of those assigned to the agent (what `inbox?mine=1`
    lists), so an inbox filtered to the agent's own counts what it lists."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    mine = _flag(request, "mine")
    counts = await runtime.store.count_by_state()
    assigned = await runtime.store.count_by_state(agent=agent.id) if mine else None
    body = []
    for name in sorted(agent.queues):
        info = runtime.directory.queues.get(name)
        queue: dict[str, Any] = {
            "name": name,
            "distribution": info.distribution if info else "manual",
            "counts": {s.value: counts.get((s.value, name), 0) for s in State},
        }
        if assigned is not None:
            # Open states only: an agent's inactive and closed ones are their whole history.
            queue["mine"] = {
                s.value: assigned.get((s.value, name), 0) for s in State if s in OPEN_STATES
            }
        body.append(queue)
    return json_response({"queues": body})


@routes.get("/api/v1/conversations/{id}")
async def conversation(request: web.Request) -> web.Response:
    """Preview: any agent of the queue may read a conversation without accepting it."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    limit = _limit(request, default=MESSAGES_PER_PAGE)
    before = _once(request, "before")
    if before is not None and not MESSAGE_ID.fullmatch(before):
        raise InvalidInput("before must be a message id (m_...)")
    found = await runtime.actions.visible(request.match_info["id"], agent)
    if before is not None:  # pages go by the order messages were stored: from one of these
        shown = await runtime.store.get_message(before)
        if shown is None or shown.conversation_id != found.id:
            raise InvalidInput("before must be the id of a message of this conversation")
    # One more than asked tells whether there is an earlier page.
    messages = await runtime.store.list_recent_messages(found.id, before=before, limit=limit + 1)
    earlier = len(messages) > limit
    body = conversation_json(found, runtime.clock.now(), runtime.adapters)
    body["messages"] = [message_json(m) for m in messages[-limit:]]
    body["has_earlier"] = earlier
    return json_response(body)


async def _act(request: web.Request, action: str) -> web.Response:
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    conversation_id = request.match_info["id"]
    if action == "transfer":
        body = parse_body(TransferBody, await read_json(request))
        if (body.queue is None) == (body.agent is None) and body.agent is None:
            raise InvalidInput("transfer needs 'queue' or 'agent'")
        stored, _ = await runtime.actions.transfer(
            conversation_id, agent, to_queue=body.queue, to_agent=body.agent
        )
    else:
        stored, _ = await getattr(runtime.actions, action)(conversation_id, agent)
    return json_response(
        {"conversation": conversation_json(stored, runtime.clock.now(), runtime.adapters)}
    )


@routes.post("/api/v1/conversations/{id}/accept")
async def accept(request: web.Request) -> web.Response:
    return await _act(request, "accept")


@routes.post("/api/v1/conversations/{id}/pending")
async def pending(request: web.Request) -> web.Response:
    return await _act(request, "set_pending")


@routes.post("/api/v1/conversations/{id}/resume")
async def resume(request: web.Request) -> web.Response:
    return await _act(request, "resume")


@routes.post("/api/v1/conversations/{id}/close")
async def close(request: web.Request) -> web.Response:
    return await _act(request, "close")


@routes.post("/api/v1/conversations/{id}/transfer")
async def transfer(request: web.Request) -> web.Response:
    return await _act(request, "transfer")


@routes.post("/api/v1/conversations/{id}/typing")
async def typing(request: web.Request) -> web.Response:
    """Tell the customer the agent is typing (web chat shows it); nothing is stored."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    found = await runtime.actions.visible(request.match_info["id"], agent)
    if found.agent != agent.id:
        raise TransitionError("not_assignee", "only the assigned agent can type in it")
    await runtime.hub.broadcast(
        Event(
            type="conversation.typing", at=runtime.clock.now(), conversation=found, change="agent"
        )
    )
    return web.Response(status=204)


@routes.post("/api/v1/conversations/{id}/messages")
async def send(request: web.Request) -> web.Response:
    """Queue an agent reply (202); the same Idempotency-Key returns the first answer again."""
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request)
    body: SendBody = parse_body(SendBody, await read_json(request))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters")
    extra: dict[str, Any] = {"html": body.html} if body.html else {}
    messages = await runtime.outbound.submit(
        request.match_info["id"],
        agent,
        OutboundRequest(
            text=body.text,
            template=body.template.model_dump(exclude_none=True) if body.template else None,
            attachments=tuple(
                Attachment(
                    kind=a.resolved_kind,
                    url=a.url,
                    mime_type=a.mime_type,
                    caption=a.caption,
                    filename=a.filename,
                )
                for a in body.attachments
            ),
            extra=extra,
        ),
        key,
    )
    # `message` is the (first) message; `messages` lists every one when the channel needed
    # several for the attachments (each has its own id, status and delivery).
    return json_response(
        {"message": message_json(messages[0]), "messages": [message_json(m) for m in messages]},
        status=202,
    )
