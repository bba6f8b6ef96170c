"""The OpenAPI 3.1 description of the agent and integrator API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request",
        401: "Missing or invalid bearer token",
        403: "Agent not on the conversation's queue or not its assignee",
        404: "No such conversation",
        409: "Conflict: already taken, window closed, max_active reached or forbidden transition",
        413: "Body too large",
        503: "The store is down or did not answer in time (`store_unavailable`); nothing was"
        " changed or acknowledged: retry later",
    }
    return {str(c): {"description": meaning[c], **_json(ERROR)} for c in codes}


def _action(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/ConversationId"}],
        "responses": {
            "200": {
                "description": "The conversation after the change",
                **_json({"type": "object", "properties": {"conversation": _ref("Conversation")}}),
            },
            **_errors(400, 401, 403, 404, 409, 503),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


STATE = {"type": "string", "enum": ["waiting", "active", "pending", "inactive", "closed"]}
TIME = {"type": ["string", "null"], "format": "date-time"}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Channel gateway agent API",
            "version": "1",
            "description": "Inbox, preview, accept, reply, pending, resume, close, transfer; "
            "live stream over WebSocket; the integrators' event log.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/me": {
                "get": {
                    "summary": "The authenticated agent",
                    "responses": {"200": {"description": "Agent"}, **_errors(401)},
                }
            },
            "/api/v1/agents": {
                "get": {
                    "summary": "Agents sharing a queue with the caller: online state and load (transfer targets)",
                    "responses": {"200": {"description": "Agents"}, **_errors(401, 503)},
                }
            },
            "/api/v1/queues": {
                "get": {
                    "summary": "The agent's queues with counts per state",
                    "responses": {"200": {"description": "Queues"}, **_errors(401, 503)},
                }
            },
            "/api/v1/inbox": {
                "get": {
                    "summary": "Conversations by state on the agent's queues (waiting: oldest queued first)",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": STATE},
                        {"name": "queue", "in": "query", "schema": {"type": "string"}},
                        {"name": "mine", "in": "query", "schema": {"type": "boolean"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "Conversations",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "conversations": {
                                            "type": "array",
                                            "items": _ref("Conversation"),
                                        }
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 403, 503),
                    },
                }
            },
            "/api/v1/conversations/{id}": {
                "get": {
                    "summary": "A conversation with its messages (preview without accepting)",
                    "parameters": [{"$ref": "#/components/parameters/ConversationId"}],
                    "responses": {
                        "200": {
                            "description": "Conversation",
                            **_json(_ref("ConversationWithMessages")),
                        },
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/api/v1/conversations/{id}/accept": {
                "post": _action(
                    "Accept a waiting conversation (exactly one agent wins; the others get 409)"
                )
            },
            "/api/v1/conversations/{id}/pending": {
                "post": _action("Set an active conversation aside")
            },
            "/api/v1/conversations/{id}/resume": {
                "post": _action("Resume a pending conversation while the channel allows replies")
            },
            "/api/v1/conversations/{id}/close": {"post": _action("Close a conversation")},
            "/api/v1/conversations/{id}/transfer": {
                "post": _action(
                    "Transfer to another queue (back to waiting) or another agent",
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
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "A retry with the same key sends once and returns the first answer",
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
                                {
                                    "type": "object",
                                    "properties": {
                                        "message": _ref("Message"),
                                        "messages": {"type": "array", "items": _ref("Message")},
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 403, 404, 409, 413, 503),
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
                            "description": "The media bytes, with the provider's content type; untrusted content is sent as a download (`Content-Disposition: attachment`)",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_errors(401, 403, 503),
                        "404": {
                            "description": "No such conversation, message or attachment index, or the channel cannot download media",
                            **_json(ERROR),
                        },
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
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 60},
                            "description": "Long-poll seconds",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "Events",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "events": {"type": "array", "items": _ref("Event")},
                                        "cursor": {"type": ["string", "null"]},
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/api/v1/stream": {
                "get": {
                    "summary": "WebSocket of live events for the agent; its open connection is the agent's presence (?access_token= accepted, ?after=CURSOR replays)",
                    "responses": {"101": {"description": "Switching protocols"}, **_errors(401)},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "ConversationId": {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Contact": {
                    "type": "object",
                    "properties": {
                        "address": {"type": "string"},
                        "display_name": {"type": ["string", "null"]},
                    },
                },
                "Conversation": {
                    "type": "object",
                    "required": [
                        "id",
                        "state",
                        "channel",
                        "channel_type",
                        "queue",
                        "contact",
                        "queued_at",
                        "can_reply",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "state": STATE,
                        "channel": {"type": "string"},
                        "channel_type": {"type": "string"},
                        "queue": {"type": "string"},
                        "agent": {"type": ["string", "null"]},
                        "contact": _ref("Contact"),
                        "queued_at": TIME,
                        "last_message_at": TIME,
                        "window_expires_at": TIME,
                        "can_reply": {"type": "boolean"},
                        "inactive_reason": {
                            "type": ["string", "null"],
                            "enum": ["window_expired", "no_agent_available", None],
                        },
                        "preview": {"type": ["string", "null"]},
                    },
                },
                "ConversationWithMessages": {
                    "allOf": [
                        _ref("Conversation"),
                        {
                            "type": "object",
                            "properties": {"messages": {"type": "array", "items": _ref("Message")}},
                        },
                    ]
                },
                "Attachment": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string"},
                        "url": {"type": ["string", "null"]},
                        "media_id": {"type": ["string", "null"]},
                        "mime_type": {"type": ["string", "null"]},
                        "caption": {"type": ["string", "null"]},
                        "filename": {"type": ["string", "null"]},
                        "size": {"type": ["integer", "null"]},
                    },
                },
                "Message": {
                    "type": "object",
                    "required": ["id", "direction", "kind", "sent_at", "received_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "direction": {"type": "string", "enum": ["in", "out"]},
                        "kind": {"type": "string"},
                        "text": {"type": ["string", "null"]},
                        "sent_at": TIME,
                        "received_at": TIME,
                        "provider_message_id": {"type": ["string", "null"]},
                        "status": {
                            "type": ["string", "null"],
                            "enum": ["queued", "sent", "delivered", "read", "failed", None],
                        },
                        "error_code": {"type": ["string", "null"]},
                        "attachments": {"type": "array", "items": _ref("Attachment")},
                    },
                },
                "SendMessage": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "text": {"type": "string", "maxLength": 4096},
                        "template": {
                            "type": "object",
                            "required": ["name", "language"],
                            "properties": {
                                "name": {"type": "string"},
                                "language": {"type": "string"},
                                "params": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "attachments": {"type": "array", "items": _ref("Attachment")},
                        "html": {"type": "string"},
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["cursor", "type", "at"],
                    "properties": {
                        "cursor": {"type": "string"},
                        "type": {
                            "type": "string",
                            "enum": [
                                "message.received",
                                "message.sent",
                                "message.status",
                                "conversation.created",
                                "conversation.updated",
                            ],
                        },
                        "change": {"type": "string"},
                        "at": TIME,
                        "conversation": _ref("Conversation"),
                        "message": _ref("Message"),
                    },
                },
            },
        },
    }
