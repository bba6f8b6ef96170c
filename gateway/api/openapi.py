"""The OpenAPI 3.1 description of the gateway's HTTP surface (served at /api/openapi.json).

It describes what the server really returns: every status a handler answers and every field
the serializers (`gateway/api/serialize.py`, the web chat's `visitor_message_json`) write.
tests/api/test_openapi_matches.py drives a real gateway through these endpoints and fails on
a status or a JSON key the document does not list, so a field or status added to the code
needs its line here.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A JSON object with exactly these properties (fields may be added, never removed)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


MEANING = {
    400: "Malformed request (`invalid_request`, `invalid_json`)",
    401: "Missing or invalid bearer token (`unauthorized`)",
    403: "Agent not on the conversation's queue or not its assignee (`forbidden`,"
    " `not_on_queue`, `not_assignee`)",
    404: "No such conversation (`not_found`)",
    409: "Conflict: already taken, window closed, max_active reached or forbidden transition"
    " (`already_taken`, `window_closed`, `max_active_reached`, `agent_offline`,"
    " `invalid_transition`, `conflict`)",
    408: "The body did not arrive within 30 s (`request_timeout`); the connection is closed",
    413: "Body too large (`payload_too_large`)",
    415: "The body has a `Content-Encoding` (gzip, deflate): bodies are taken as sent, never"
    " inflated (`unsupported_media_type`); the connection is closed",
    429: "Over the channel's rate limit (`rate_limited`); `Retry-After` says how many seconds"
    " to wait. Nothing was stored",
    422: "The same Idempotency-Key was used with a different text, template or attachments"
    " (`idempotency_key_reused`); nothing was sent",
    503: "The store is down or did not answer in time (`store_unavailable`); nothing was"
    " changed or acknowledged: retry later",
}


def _errors(*codes: int, **descriptions: str) -> dict[str, Any]:
    """Error responses by status; `s404="..."` overrides the usual meaning of a status."""
    return {
        str(c): {"description": descriptions.get(f"s{c}", MEANING[c]), **_json(ERROR)}
        for c in codes
    }


def _limit_param(default: int) -> dict[str, Any]:
    """The `limit` query parameter of a list: 1 to 1000 items."""
    schema = {"type": "integer", "minimum": 1, "maximum": 1000, "default": default}
    return {"name": "limit", "in": "query", "schema": schema}


def _action(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/ConversationId"}],
        "responses": {
            "200": {
                "description": "The conversation after the change",
                **_json(_object({"conversation": _ref("Conversation")}, ["conversation"])),
            },
            **_errors(400, 401, 403, 404, 409, 503),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
        op["responses"].update(_errors(408, 413, 415))
    return op


STATE = {"type": "string", "enum": ["waiting", "active", "pending", "inactive", "closed"]}
OPEN = ["waiting", "active", "pending"]
TIME = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STRING = {"type": ["string", "null"]}
ANY_OBJECT = {"type": "object", "additionalProperties": True}
UNAUTHENTICATED: list[dict[str, list[str]]] = []
CHANNEL = {
    "name": "channel",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The name of a `webchat` channel in the config (another name is a 404)",
}
ORIGIN_403 = "The page's `Origin` is not in the channel's `allowed_origins` (`origin_not_allowed`)"
VISITOR_401 = "Missing, forged or expired visitor token (`invalid_token`)"
WEBCHAT_503 = (
    "The store is down or did not answer in time (`store_unavailable`); nothing was"
    " acknowledged: retry with the same `client_id`"
)


def _preflight(methods: str) -> dict[str, Any]:
    return {
        "summary": f"CORS preflight for {methods} from a page on an allowed origin",
        "security": UNAUTHENTICATED,
        "parameters": [CHANNEL],
        "responses": {
            "204": {"description": "Allowed (with `Access-Control-Allow-*` headers)"},
            "403": {"description": ORIGIN_403, **_json(ERROR)},
        },
    }


def _agent_paths() -> dict[str, Any]:
    return {
        "/api/v1/me": {
            "get": {
                "summary": "The authenticated agent",
                "responses": {
                    "200": {"description": "Agent", **_json(_ref("Me"))},
                    **_errors(401),
                },
            }
        },
        "/api/v1/agents": {
            "get": {
                "summary": "Agents sharing a queue with the caller: online state and load (transfer targets)",
                "parameters": [
                    {
                        "name": "all",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "`1`, `true` or `yes`: every agent, each with all their"
                        " queues (a transfer may go to another queue's agent)",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Agents",
                        **_json(
                            _object(
                                {"agents": {"type": "array", "items": _ref("Colleague")}},
                                ["agents"],
                            )
                        ),
                    },
                    **_errors(401, 503),
                },
            }
        },
        "/api/v1/queues": {
            "get": {
                "summary": "The agent's queues with counts per state",
                "parameters": [
                    {
                        "name": "mine",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "`1`, `true` or `yes`: each queue also carries `mine`,"
                        " the counts of the conversations assigned to the caller",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Queues",
                        **_json(
                            _object(
                                {"queues": {"type": "array", "items": _ref("Queue")}}, ["queues"]
                            )
                        ),
                    },
                    **_errors(400, 401, 503, s400="Bad `mine` (`invalid_request`)"),
                },
            }
        },
        "/api/v1/inbox": {
            "get": {
                "summary": "Conversations by state on the agent's queues (waiting: oldest queued first)",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {**STATE, "default": "waiting"}},
                    {"name": "queue", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "mine",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "`1`, `true` or `yes`: only conversations assigned to the caller",
                    },
                    _limit_param(200),
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "The `next_cursor` of the previous page, with the same"
                        " `state`, `queue` and `mine`: the page that follows it",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Conversations",
                        **_json(
                            _object(
                                {
                                    "conversations": {
                                        "type": "array",
                                        "items": _ref("Conversation"),
                                    },
                                    "next_cursor": {
                                        **NULLABLE_STRING,
                                        "description": "Pass as `cursor` for the next page; null"
                                        " on the last page",
                                    },
                                },
                                ["conversations", "next_cursor"],
                            )
                        ),
                    },
                    **_errors(
                        400,
                        401,
                        403,
                        404,
                        503,
                        s400="Bad `state`, `limit` or `cursor` (`invalid_request`)",
                        s403="The agent is not on that `queue` (`not_on_queue`)",
                        s404="No queue by that name (`not_found`)",
                    ),
                },
            }
        },
        "/api/v1/conversations/{id}": {
            "get": {
                "summary": "A conversation with its messages (preview without accepting)",
                "description": "Messages come newest first in pages, each page oldest first:"
                " the newest `limit` of them, and `has_earlier` says whether older ones"
                " remain; `?before=` the first message of a page reads the page before it.",
                "parameters": [
                    {"$ref": "#/components/parameters/ConversationId"},
                    _limit_param(1000),
                    {
                        "name": "before",
                        "in": "query",
                        "description": "A message id: only messages older than it",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Conversation",
                        **_json(_ref("ConversationWithMessages")),
                    },
                    **_errors(400, 401, 403, 404, 503, s400="Bad `limit` or `before`"),
                },
            }
        },
        "/api/v1/conversations/{id}/accept": {
            "post": _action(
                "Accept a waiting conversation (exactly one agent wins; the others get 409)"
            )
        },
        "/api/v1/conversations/{id}/pending": {"post": _action("Set an active conversation aside")},
        "/api/v1/conversations/{id}/resume": {
            "post": _action("Resume a pending conversation while the channel allows replies")
        },
        "/api/v1/conversations/{id}/close": {"post": _action("Close a conversation")},
        "/api/v1/conversations/{id}/transfer": {
            "post": _action(
                "Transfer to another queue (back to waiting) or another agent (409"
                " `agent_offline` if that agent's stream is gone)",
                {
                    "type": "object",
                    "properties": {"queue": {"type": "string"}, "agent": {"type": "string"}},
                    "additionalProperties": False,
                },
            )
        },
        "/api/v1/conversations/{id}/typing": {
            "post": {
                "summary": "Show the customer that the assigned agent is typing (web chat); nothing is stored",
                "parameters": [{"$ref": "#/components/parameters/ConversationId"}],
                "responses": {
                    "204": {"description": "Signalled"},
                    **_errors(401, 403, 404, 503),
                },
            }
        },
        "/api/v1/conversations/{id}/messages": {
            "post": {
                "summary": "Send a reply: free text inside the window, a template any time",
                "parameters": [
                    {"$ref": "#/components/parameters/ConversationId"},
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "A retry with the same key and the same content sends once"
                        " and returns the first answer; the same key with a different text,"
                        " template or attachments is a 422",
                    },
                ],
                "requestBody": {"required": True, **_json(_ref("SendMessage"))},
                "responses": {
                    "202": {
                        "description": "Queued for delivery. More attachments than the"
                        " channel carries in one message (Cloud API: 1, Twilio: 10) are"
                        " sent as several messages, in order: `message` is the first,"
                        " `messages` lists them all",
                        **_json(
                            _object(
                                {
                                    "message": _ref("Message"),
                                    "messages": {"type": "array", "items": _ref("Message")},
                                },
                                ["message", "messages"],
                            )
                        ),
                    },
                    **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 503),
                },
            }
        },
        "/api/v1/conversations/{id}/messages/{message_id}/attachments/{index}": {
            "get": {
                "summary": "Download an attachment of a message, fetched from the provider by the channel that received it (same visibility as the preview)",
                "parameters": [
                    {"$ref": "#/components/parameters/ConversationId"},
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "index",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Position in the message's `attachments`",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The media bytes, with the provider's content type; untrusted content is sent as a download (`Content-Disposition: attachment`); the file's name is in `filename` (ASCII) and, when it has other characters, `filename*` (RFC 6266, UTF-8)",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(
                        401,
                        403,
                        404,
                        503,
                        s404="No such conversation, message or attachment index, or the channel"
                        " cannot download media (`not_found`)",
                    ),
                    "502": {
                        "description": "The provider refused or did not answer (`media_unavailable`); the media host is not one the channel trusts",
                        **_json(ERROR),
                    },
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "The ordered normalized event log, resumable by cursor: every event for an"
                " integrator's token, an agent's own conversations for an agent's token",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A cursor this log issued (empty or absent: from the start);"
                        " a malformed one, or one past the newest event, is a 400",
                    },
                    _limit_param(500),
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60, "default": 0},
                        "description": "Long-poll seconds",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Events; `cursor` is that of the last event scanned (resume from it)",
                        **_json(
                            _object(
                                {
                                    "events": {"type": "array", "items": _ref("Event")},
                                    "cursor": NULLABLE_STRING,
                                    "gap": {
                                        "type": "boolean",
                                        "description": "The event retention deleted events"
                                        " after `after` before they were read: this page goes"
                                        " on from the oldest event kept; rebuild what you keep"
                                        " from the conversations",
                                    },
                                },
                                ["events", "cursor", "gap"],
                            )
                        ),
                    },
                    **_errors(400, 401, 503, s400="Bad `after`, `limit` or `wait`"),
                },
            }
        },
        "/api/v1/stream": {
            "get": {
                "summary": "WebSocket of live events for the agent; its open connection is the"
                " agent's presence (?access_token= accepted, ?after=CURSOR replays first)",
                "description": "Every frame is a JSON text frame: first a `StreamHello`, then"
                " `Event`s (including `conversation.typing`, which has no cursor and is not in"
                " the log); the text `ping` is answered with a `StreamPong`. The frames are"
                " listed in `x-frames`.",
                "parameters": [
                    {"name": "access_token", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "As for `/api/v1/events`; a bad one is a 400 before the upgrade",
                    },
                ],
                "x-frames": {"oneOf": [_ref("StreamHello"), _ref("StreamPong"), _ref("Event")]},
                "responses": {
                    "101": {"description": "Switching protocols"},
                    **_errors(
                        400,
                        401,
                        429,
                        503,
                        s400="Not a WebSocket upgrade request, or a bad `after` (`invalid_request`)",
                        s429="The agent already holds 16 streams on this node"
                        " (`too_many_connections`): close one",
                        s503="The store cannot record the agent online right now"
                        " (`store_unavailable`): refused before the upgrade, retry later",
                    ),
                },
            }
        },
    }


def _webchat_paths() -> dict[str, Any]:
    visitor_messages = {
        "type": "array",
        "items": _ref("VisitorMessage"),
    }
    return {
        "/webchat/widget.js": {
            "get": {
                "summary": "The embeddable chat widget",
                "security": UNAUTHENTICATED,
                "responses": {
                    "200": {
                        "description": "JavaScript",
                        "content": {"application/javascript": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/webchat/{channel}/demo": {
            "get": {
                "summary": "A demo page with the widget for this channel",
                "security": UNAUTHENTICATED,
                "parameters": [CHANNEL],
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/webchat/{channel}/session": {
            "post": {
                "summary": "Open a visitor session (`display_name`) or resume one (`token`):"
                " a new token for the same visitor",
                "security": UNAUTHENTICATED,
                "parameters": [CHANNEL],
                "requestBody": {
                    "required": False,
                    **_json(
                        {
                            "type": "object",
                            "properties": {
                                "display_name": {"type": "string", "maxLength": 80},
                                "token": {"type": "string"},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {
                        "description": "A signed token for this visitor's own conversation",
                        **_json(
                            _object(
                                {"token": {"type": "string"}, "visitor_id": {"type": "string"}},
                                ["token", "visitor_id"],
                            )
                        ),
                    },
                    **_errors(
                        400,
                        401,
                        403,
                        408,
                        413,
                        415,
                        429,
                        s400="The body is not a JSON object, or a bad `display_name` or `token`"
                        " (`invalid_request`, `invalid_json`)",
                        s401=VISITOR_401,
                        s403=ORIGIN_403,
                    ),
                },
            },
            "options": _preflight("POST"),
        },
        "/webchat/{channel}/messages": {
            "post": {
                "summary": "Send a visitor message over plain HTTP (as the socket's `message`"
                " frame); a resend with the same `client_id` is not a new message",
                "security": [{"visitor": []}],
                "parameters": [CHANNEL],
                "requestBody": {"required": True, **_json(_ref("VisitorSend"))},
                "responses": {
                    "201": {"description": "Acknowledged", **_json(_ref("VisitorAck"))},
                    **_errors(
                        400,
                        401,
                        403,
                        408,
                        409,
                        413,
                        415,
                        422,
                        429,
                        503,
                        s400="Bad frame: no `text` or `client_id`, text too long, not JSON",
                        s409="The visitor's chat kept changing under simultaneous writes"
                        " (`conflict`): nothing stored, send it again with the same `client_id`",
                        s422="The `client_id` already stands for a message with another text"
                        " (`client_id_reused`); nothing was stored",
                        s401=VISITOR_401,
                        s403=ORIGIN_403,
                        s503=WEBCHAT_503,
                    ),
                },
            },
            "get": {
                "summary": "The visitor's messages in order (`after`: only those after that"
                " message of theirs; `0`: the whole history), at most 1000 at a time:"
                " `has_more` says to ask again with `after` the last of them",
                "security": [{"visitor": []}],
                "parameters": [
                    CHANNEL,
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "Messages",
                        **_json(
                            _object(
                                {
                                    "messages": visitor_messages,
                                    "has_more": {"type": "boolean"},
                                    "conversation": {
                                        "oneOf": [
                                            _object({"state": STATE}, ["state"]),
                                            {"type": "null"},
                                        ],
                                        "description": "On the last page (`has_more` false):"
                                        " where the visitor's latest chat stands (null before"
                                        " their first message)",
                                    },
                                },
                                ["messages", "has_more"],
                            )
                        ),
                    },
                    **_errors(
                        400,
                        401,
                        403,
                        503,
                        s400="`after` is not the id of one of this visitor's messages",
                        s401=VISITOR_401,
                        s403=ORIGIN_403,
                        s503=WEBCHAT_503,
                    ),
                },
            },
            "options": _preflight("GET, POST"),
        },
        "/webchat/{channel}/read": {
            "post": {
                "summary": "A read receipt over plain HTTP (as the socket's `read` frame): the"
                " visitor was shown this agent reply, which moves to `read`",
                "security": [{"visitor": []}],
                "parameters": [CHANNEL],
                "requestBody": {"required": True, **_json(_ref("VisitorRead"))},
                "responses": {
                    "204": {"description": "Recorded (or already read)"},
                    **_errors(
                        400,
                        401,
                        403,
                        408,
                        413,
                        503,
                        s400="No `message_id`, or not an agent reply of this visitor's",
                        s401=VISITOR_401,
                        s403=ORIGIN_403,
                        s503=WEBCHAT_503,
                    ),
                },
            },
            "options": _preflight("POST"),
        },
        "/webchat/{channel}/ws": {
            "get": {
                "summary": "The visitor's WebSocket: send `message`, `typing`, `read` and"
                " `ping` frames, get `ack`, `message`, `typing`, `conversation`, `pong` and"
                " `error` frames",
                "description": "With `after`, every message the visitor missed since that one is"
                " replayed first, in order (`after=0`: the whole history); without it, the agent"
                " replies that never reached any socket of the visitor are. When the store"
                " cannot take a message the socket"
                " sends an `error` frame (`store_unavailable`) and closes with 1013 (try again"
                " later); on shutdown it closes with 1001. Frames are listed in `x-frames`"
                " (server to visitor) and `x-client-frames` (visitor to server). A message over"
                " the rate limit gets an `error` frame (`rate_limited`, with `retry_after`) and"
                " is not stored; the socket stays open. So does a used `client_id` with another"
                " text (`client_id_reused`). `message` frames also carry what the visitor wrote"
                " through another of their sockets (another tab), never back to the one it came"
                " through (which gets the `ack`). `ping` is answered with `pong`: a client that"
                " gets no answer can tell a dead network from a quiet chat.",
                "security": UNAUTHENTICATED,
                "parameters": [
                    CHANNEL,
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "x-frames": {
                    "oneOf": [
                        _ref("VisitorAck"),
                        _ref("VisitorPush"),
                        _ref("VisitorTyping"),
                        _ref("VisitorConversation"),
                        _ref("VisitorError"),
                        _object({"type": {"const": "pong"}}, ["type"]),
                    ]
                },
                "x-client-frames": {
                    "oneOf": [
                        _ref("VisitorSend"),
                        _object({"type": {"const": "typing"}}, ["type"]),
                        _object({"type": {"const": "ping"}}, ["type"]),
                        _ref("VisitorRead"),
                    ]
                },
                "responses": {
                    "101": {"description": "Switching protocols"},
                    **_errors(
                        400,
                        401,
                        403,
                        429,
                        503,
                        s400="Not a WebSocket upgrade request, or a bad `after`",
                        s401=VISITOR_401,
                        s403=ORIGIN_403,
                        s429="This visitor or address already holds as many sockets on this"
                        " node as the channel allows (`too_many_connections`,"
                        " `max_sockets_per_visitor`, `max_sockets_per_address`): close one",
                        s503="The store cannot replay `after` right now (`store_unavailable`)",
                    ),
                },
            }
        },
    }


def _ops_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "security": UNAUTHENTICATED,
                "responses": {
                    "200": {
                        "description": "Alive",
                        **_json(_object({"status": {"const": "ok"}}, ["status"])),
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the store answers and every adapter started; degraded"
                " channels are listed (a degraded channel does not make the node unready)."
                " Why a channel is degraded (`detail`) is shown to a valid agent or integrator"
                " bearer token only, and is empty otherwise",
                "security": UNAUTHENTICATED,
                "responses": {
                    "200": {"description": "Ready", **_json(_ref("Readiness"))},
                    "503": {
                        "description": "Not ready: the store is unreachable or adapters have not started",
                        **_json(_ref("Readiness")),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics; served during a store outage too"
                " (`gateway_store_up 0`, store-read gauges left out)",
                "security": UNAUTHENTICATED,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "security": UNAUTHENTICATED,
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _schemas() -> dict[str, Any]:
    message_properties: dict[str, Any] = {
        "id": {"type": "string"},
        "conversation_id": {"type": "string"},
        "channel": {"type": "string"},
        "channel_type": {"type": "string"},
        "provider": {"type": "string"},
        "direction": {"type": "string", "enum": ["in", "out"]},
        "kind": {"type": "string"},
        "text": NULLABLE_STRING,
        "sent_at": TIME,
        "received_at": TIME,
        "provider_message_id": NULLABLE_STRING,
        "status": {
            "type": ["string", "null"],
            "enum": ["queued", "sent", "delivered", "read", "failed", None],
            "description": "Outbound delivery state; null on inbound messages",
        },
        "status_at": TIME,
        "error_code": {
            **NULLABLE_STRING,
            "description": "Why delivery failed: the provider's code",
        },
        "error_message": {
            **NULLABLE_STRING,
            "description": "Why delivery failed: the provider's (or the gateway's) explanation",
        },
        "attachments": {"type": "array", "items": _ref("Attachment")},
        "reply_to": {**NULLABLE_STRING, "description": "Provider id of the message answered"},
        "updates": {
            **NULLABLE_STRING,
            "description": "Provider id of the message this one modifies (reaction, edit, revoke)",
        },
        "subject": {**NULLABLE_STRING, "description": "Email subject"},
        "agent": {**NULLABLE_STRING, "description": "The agent who sent an outbound message"},
        "client_id": {**NULLABLE_STRING, "description": "The web chat client's message id"},
        "template": {
            "type": ["object", "null"],
            "additionalProperties": True,
            "description": "The template an outbound message was sent with (`name`, `language`, `params`)",
        },
        "contact": {"oneOf": [_ref("Contact"), {"type": "null"}]},
        "extra": {
            **ANY_OBJECT,
            "description": "Channel-specific details (e.g. `html` of an email reply)",
        },
    }
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "retry_after": {
                            "type": "integer",
                            "description": "With `rate_limited` on the web chat: seconds to wait,"
                            " as `Retry-After` says (which a page on another site can read too)",
                        },
                    },
                    ["code", "message"],
                )
            },
            ["error"],
        ),
        "Me": _object(
            {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "queues": {"type": "array", "items": {"type": "string"}},
                "max_active": {"type": "integer"},
                "transfer_queues": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Every queue a conversation may be transferred to",
                },
            },
            ["id", "name", "queues", "max_active", "transfer_queues"],
        ),
        "Colleague": _object(
            {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "queues": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The queues shared with the caller (with `all`: all"
                    " the agent's queues)",
                },
                "online": {"type": "boolean"},
                "active": {"type": "integer", "description": "Active conversations assigned"},
                "max_active": {"type": "integer"},
            },
            ["id", "name", "queues", "online", "active", "max_active"],
        ),
        "Queue": _object(
            {
                "name": {"type": "string"},
                "distribution": {"type": "string", "enum": ["manual", "automatic"]},
                "counts": _object(
                    {s: {"type": "integer"} for s in STATE["enum"]}, list(STATE["enum"])
                ),
                "mine": {
                    **_object({s: {"type": "integer"} for s in OPEN}, OPEN),
                    "description": "With `mine=1` only: the counts of the conversations"
                    " assigned to the caller in an open state (what `/api/v1/inbox?mine=1`"
                    " lists); inactive and closed ones, the agent's whole history, are not"
                    " counted",
                },
            },
            ["name", "distribution", "counts"],
        ),
        "Contact": _object(
            {"address": {"type": "string"}, "display_name": NULLABLE_STRING}, ["address"]
        ),
        "Conversation": _object(
            {
                "id": {"type": "string"},
                "state": STATE,
                "channel": {"type": "string"},
                "channel_type": {"type": "string"},
                "provider": {"type": "string"},
                "queue": {"type": "string"},
                "agent": NULLABLE_STRING,
                "contact": _ref("Contact"),
                "queued_at": TIME,
                "created_at": TIME,
                "updated_at": TIME,
                "last_message_at": TIME,
                "last_customer_message_at": TIME,
                "window_expires_at": TIME,
                "can_reply": {"type": "boolean"},
                "inactive_reason": {
                    **NULLABLE_STRING,
                    "description": "`window_expired`, `no_agent_available`, or `channel_removed`"
                    " (its channel left the config; plugins may add their own)",
                },
                "preview": NULLABLE_STRING,
                "subject": {**NULLABLE_STRING, "description": "Email subject"},
                "closed_at": TIME,
                "previous_conversation_id": {
                    **NULLABLE_STRING,
                    "description": "The conversation this one continues (e.g. an email reply to a closed one)",
                },
                "version": {
                    "type": "integer",
                    "description": "Increases by one on every change a reader can see, each"
                    " with its event in the log (a timer moved on internally keeps it): the"
                    " copy with the higher version is the newer",
                },
                "pending_reason": {
                    **NULLABLE_STRING,
                    "description": "While pending: `set_aside` (its agent set it pending) or"
                    " `agent_offline` (its agent stayed offline past the grace); null otherwise",
                },
                "requeue_at": {
                    **TIME,
                    "description": "While pending on a queue with `requeue_after`: when it goes"
                    " back to waiting, at its original place, unless resumed; null otherwise",
                },
            },
            [
                "id",
                "state",
                "channel",
                "channel_type",
                "queue",
                "contact",
                "queued_at",
                "can_reply",
            ],
        ),
        "ConversationWithMessages": {
            "allOf": [
                _ref("Conversation"),
                _object(
                    {
                        "messages": {"type": "array", "items": _ref("Message")},
                        "has_earlier": {
                            "type": "boolean",
                            "description": "Older messages remain: read them with `?before=`"
                            " the first of these",
                        },
                    },
                    ["messages", "has_earlier"],
                ),
            ]
        },
        "Attachment": _object(
            {
                "kind": {"type": "string"},
                "url": NULLABLE_STRING,
                "media_id": NULLABLE_STRING,
                "mime_type": NULLABLE_STRING,
                "caption": NULLABLE_STRING,
                "filename": NULLABLE_STRING,
                "size": {"type": ["integer", "null"]},
            },
            ["kind"],
        ),
        "Message": _object(
            message_properties,
            ["id", "conversation_id", "direction", "kind", "sent_at", "received_at"],
        ),
        "EventMessage": _object(
            {
                **message_properties,
                "raw": {"description": "The provider's payload as received (any JSON)"},
            },
            ["id", "conversation_id", "direction", "kind", "sent_at", "received_at"],
        ),
        "SendAttachment": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "kind": {
                    "type": "string",
                    "enum": ["image", "audio", "video", "document", "sticker", "file"],
                    "description": "Absent: what `mime_type` says (image/*, audio/*, video/*),"
                    " else `document`",
                },
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 2048,
                    "description": "Absolute http:// or https:// URL the provider can fetch",
                },
                "mime_type": NULLABLE_STRING,
                "caption": {"type": ["string", "null"], "maxLength": 1024},
                "filename": {"type": ["string", "null"], "maxLength": 255},
            },
        },
        "SendMessage": {
            "type": "object",
            "additionalProperties": False,
            "description": "`text` or `template` (not both), and/or `attachments`",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 4096},
                "template": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "language"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 512},
                        "language": {"type": "string", "minLength": 1, "maxLength": 32},
                        "params": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "string"}, "maxItems": 50},
                                {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                    "propertyNames": {"pattern": "^[A-Za-z0-9_]{1,64}$"},
                                    "maxProperties": 50,
                                },
                            ],
                            "description": "The body's variables: positional, or named",
                        },
                        "components": {
                            "type": "array",
                            "items": {"type": "object"},
                            "minItems": 1,
                            "maxItems": 10,
                            "description": "Cloud API only: template components as Meta takes"
                            " them (header media, button parameters), sent as written",
                        },
                    },
                },
                "attachments": {
                    "type": "array",
                    "items": _ref("SendAttachment"),
                    "maxItems": 30,
                },
                "html": {
                    "type": "string",
                    "maxLength": 100_000,
                    "description": "An HTML body for channels that carry one (email)",
                },
            },
        },
        "Event": _object(
            {
                "cursor": {
                    **NULLABLE_STRING,
                    "description": "Position in the log; null on `conversation.typing`,"
                    " which is only sent live and never stored",
                },
                "type": {
                    "type": "string",
                    "enum": [
                        "message.received",
                        "message.sent",
                        "message.status",
                        "conversation.created",
                        "conversation.updated",
                        "conversation.typing",
                    ],
                    "description": "`conversation.typing` is only on `/api/v1/stream`",
                },
                "change": {
                    "type": "string",
                    "description": "What changed, on `conversation.updated` (accepted, pending,"
                    " resumed, closed, inactive, message, transferred, requeued, ...;"
                    " `queue_removed` and `agent_removed` when a restart found its queue or"
                    " agent gone from the config) and who types on `conversation.typing`"
                    " (`agent` or `visitor`)",
                },
                "at": TIME,
                "conversation": {"oneOf": [_ref("Conversation"), {"type": "null"}]},
                "message": {
                    "oneOf": [_ref("EventMessage"), {"type": "null"}],
                    "description": "The message of a `message.*` event; null on"
                    " `conversation.*` events",
                },
                "moved_from": {
                    **_object(
                        {"queue": {"type": "string"}, "agent": NULLABLE_STRING},
                        ["queue", "agent"],
                    ),
                    "description": "Where the conversation was before this change took it from"
                    " a queue or an agent (a transfer, a requeue): agents who saw it there get"
                    " this event too, so they can drop it from their view",
                },
            },
            ["cursor", "type", "at", "conversation", "message"],
        ),
        "StreamHello": _object(
            {
                "type": {"const": "hello"},
                "agent": {"type": "string"},
                "cursor": {
                    **NULLABLE_STRING,
                    "description": "Where this stream starts: every event after it follows"
                    " (the `after` given, else the newest event this node had fanned out when"
                    " the socket opened)",
                },
                "gap": {
                    "type": "boolean",
                    "description": "The event retention deleted events after `after`: the"
                    " replay starts at the oldest event kept, so reload the inbox lists",
                },
            },
            ["type", "agent", "cursor", "gap"],
        ),
        "StreamPong": _object({"type": {"const": "pong"}}, ["type"]),
        "Readiness": _object(
            {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "store": {"type": "string", "enum": ["ok", "unreachable"]},
                "store_problem": {
                    "type": ["string", "null"],
                    "enum": ["unreachable", "timeout", "writes_failing", "files_gone", None],
                    "description": "Why the store is not ready; null when it is",
                },
                "adapters_started": {"type": "boolean"},
                "channels": {
                    "type": "object",
                    "additionalProperties": _object(
                        {"ok": {"type": "boolean"}, "detail": {"type": "string"}}, ["ok"]
                    ),
                },
                "degraded": {"type": "array", "items": {"type": "string"}},
            },
            ["status", "store", "adapters_started", "channels", "degraded"],
        ),
        "VisitorMessage": _object(
            {
                "id": {"type": "string"},
                "direction": {"type": "string", "enum": ["in", "out"]},
                "kind": {"type": "string"},
                "text": NULLABLE_STRING,
                "sent_at": TIME,
                "received_at": TIME,
                "provider_message_id": NULLABLE_STRING,
                "client_id": NULLABLE_STRING,
                "status": {
                    "type": ["string", "null"],
                    "enum": ["queued", "sent", "delivered", "read", "failed", None],
                },
                "attachments": {
                    "type": "array",
                    "items": _object(
                        {
                            "kind": {"type": "string"},
                            "url": NULLABLE_STRING,
                            "mime_type": NULLABLE_STRING,
                            "filename": NULLABLE_STRING,
                        }
                    ),
                },
            },
            ["id", "direction", "kind", "sent_at", "received_at"],
        ),
        "VisitorSend": {
            "type": "object",
            "required": ["text", "client_id"],
            "properties": {
                "type": {"const": "message", "description": "Optional over HTTP"},
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "description": "At most the channel's `max_text` characters (default 4096)",
                },
                "client_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 100,
                    "description": "Unique per message, e.g. a UUID",
                },
            },
        },
        "VisitorRead": _object(
            {
                "type": {"const": "read", "description": "Optional over HTTP"},
                "message_id": {
                    "type": "string",
                    "description": "The id of an agent reply the visitor was shown",
                },
            },
            ["message_id"],
        ),
        "VisitorAck": _object(
            {
                "type": {"const": "ack"},
                "client_id": {"type": "string"},
                "message": _ref("VisitorMessage"),
            },
            ["type", "client_id", "message"],
        ),
        "VisitorPush": _object(
            {"type": {"const": "message"}, "message": _ref("VisitorMessage")},
            ["type", "message"],
        ),
        "VisitorTyping": _object(
            {"type": {"const": "typing"}, "active": {"type": "boolean"}}, ["type", "active"]
        ),
        "VisitorConversation": _object(
            {
                "type": {"const": "conversation"},
                "state": STATE,
                "change": {
                    **NULLABLE_STRING,
                    "description": "Why it changed (`accepted`, `closed`, ...), sent live; null"
                    " in the frame each socket gets once it has replayed, which says where the"
                    " visitor's latest chat stands",
                },
            },
            ["type", "state"],
        ),
        "VisitorError": _object(
            {
                "type": {"const": "error"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "client_id": {"type": "string"},
                "retry_after": {
                    "type": "number",
                    "description": "`rate_limited`: seconds until the message may be resent",
                },
            },
            ["type", "code", "message"],
        ),
    }


INTEGRATOR_403 = "An integrator's token: it reads `GET /api/v1/events` only (`forbidden`)"


def _integrators_refused(paths: dict[str, Any]) -> dict[str, Any]:
    """Every agent operation answers an integrator's (valid) token with 403; the event log,
    which integrators read, is the exception."""
    for path, operations in paths.items():
        if path == "/api/v1/events":
            continue
        for operation in operations.values():
            responses = operation["responses"]
            if "401" not in responses:
                continue
            if "403" in responses:
                described = responses["403"]["description"]
                responses["403"] = {
                    **responses["403"],
                    "description": f"{described}; or: {INTEGRATOR_403}",
                }
            else:
                responses["403"] = {"description": INTEGRATOR_403, **_json(ERROR)}
    return paths


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Channel gateway API",
            "version": "1",
            "description": "The agent API (inbox, preview, accept, reply, pending, resume,"
            " close, transfer, typing, attachments; the live stream over WebSocket), the"
            " integrators' event log, the web chat visitor endpoints and the ops endpoints."
            " Not described: the provider webhooks `POST|GET /webhooks/{channel}`, whose"
            " requests and answers are each provider's own protocol (an unknown channel is a"
            " 404; while the store is down a webhook is answered 503 so the provider retries),"
            " and the agent inbox page"
            ' `/inbox`. Every error is `{"error": {"code", "message"}}`; an unknown path'
            " is a 404 and a wrong method a 405 on every route. Objects may gain fields,"
            " never lose or rename them.",
        },
        "security": [{"bearer": []}],
        "paths": {**_integrators_refused(_agent_paths()), **_webchat_paths(), **_ops_paths()},
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An agent's token"
                    " (or, on `/api/v1/events`, an integrator's); `?access_token=` on the stream",
                },
                "visitor": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A web chat visitor token from `/webchat/{channel}/session`",
                },
            },
            "parameters": {
                "ConversationId": {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "schemas": _schemas(),
        },
    }
