"""Sending to WebSocket clients that may have stopped reading.

A client that stops reading (a frozen tab, a stuck integration) lets the frames sent to it
pile up: first in the kernel, then in the transport's buffer, and a send then waits for room
that never comes. Its heartbeat fails after a while, but aiohttp closes such a socket
gracefully, waiting to write what is buffered, which the client never lets happen: the
connection, its file descriptor and megabytes of buffers stayed until the client process went
away, and every event for it waited in a pump that never ran again.

So a frame that cannot be written within `SEND_TIMEOUT` resets the connection: the transport
drops its buffer, and a zero linger time makes the kernel drop its own and send a reset,
instead of keeping the closed socket around to deliver the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

SEND_TIMEOUT = 10.0
"""How long one frame may wait for the client to make room for it (seconds)."""

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on, zero seconds: close() resets the connection and drops unsent data."""


class ClientNotReading(ConnectionResetError):
    """A frame could not be sent in time: the connection was reset (see the module docstring)."""


class Sender:
    """Sends text frames to one socket, resetting the connection of a client that stopped
    reading (`ClientNotReading`; see the module docstring)."""

    def __init__(self, ws: web.WebSocketResponse, request: web.BaseRequest) -> None:
        self.ws = ws
        self.transport = request.transport
        """The request's, taken as the socket opened: aiohttp detaches it from the request
        once it starts closing it."""
        self._writer: AbstractStreamWriter = request.writer

    async def text(self, text: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            _, high = transport.get_write_buffer_limits()
            # UTF-8 takes at most 4 bytes a character, a frame header at most 14: if even that
            # stays under the high-water mark, writing it cannot pause the transport, so the
            # send cannot wait for the client and needs no timer (one costs about 10 µs, as
            # much as a fifth of what a frame to an agent stream costs).
            if transport.get_write_buffer_size() + 4 * len(text) + 14 < high:
                await self.ws.send_str(text)
                return
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.ws.send_str(text)
        except TimeoutError:
            reset(self.transport)
            raise ClientNotReading(f"the client read nothing for {SEND_TIMEOUT:g} s") from None

    async def frames(self, frames: Sequence[bytes]) -> None:
        """Write complete frames made beforehand (`gateway.wsframe`) in one write: one system
        call for everything queued for this socket, not one per frame. The socket must not use
        per-message compression (aiohttp's own frames would then be compressed, these not)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the socket is closing")
        transport.writelines(frames)
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return
        try:  # over the high-water mark: wait until the client has taken the excess
            async with asyncio.timeout(SEND_TIMEOUT):
                await self._writer.drain()
        except TimeoutError:
            reset(transport)
            raise ClientNotReading(f"the client read nothing for {SEND_TIMEOUT:g} s") from None


def reset(transport: asyncio.Transport | None) -> None:
    """Close a connection at once, dropping whatever is still to be sent."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: nothing left to release
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()
