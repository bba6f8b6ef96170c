"""Typed keys of what the aiohttp application holds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.connlimit import ConnectionCounter

if TYPE_CHECKING:
    from gateway.api.stream import Frames
    from gateway.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")

AGENT_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("agent_sockets")
"""The agents' open stream sockets on this node, closed with 1001 when the node shuts down."""

AGENT_STREAMS: web.AppKey[ConnectionCounter] = web.AppKey("agent_streams")
"""Open streams per agent on this node, capped (see `gateway.api.stream.MAX_STREAMS_PER_AGENT`)."""

STREAM_FRAMES: web.AppKey[Frames] = web.AppKey("stream_frames")
"""Frames of recent events, made once for every agent stream (see `gateway.api.stream.Frames`)."""

STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping")
"""Set when the node starts shutting down: long polls answer at once instead of holding it."""
