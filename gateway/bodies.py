"""Reading a request body within a time limit.

aiohttp waits for a body as long as the client keeps the connection open: a client that
declares 1,000 bytes and sends five holds a handler (and a connection) forever. Every handler
that reads a body reads it through `read_within`, and a body that has not arrived in time is
refused with 408 `request_timeout` and the connection closed (what is left of the body can no
longer be told apart from a next request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from gateway.errors import GatewayError

T = TypeVar("T")

BODY_TIMEOUT = 30.0
"""Seconds a request body may take to arrive, from when the handler starts reading it."""


class BodyTimeout(GatewayError):
    code = "request_timeout"


async def read_within(request: web.Request, read: Awaitable[T]) -> T:
    """Await a read of `request`'s body, or raise BodyTimeout after `BODY_TIMEOUT` seconds.

    On a timeout the body is marked ended, or aiohttp would wait (10 s) for the rest of it
    after our answer; the answer must then also close the connection (`force_close`).
    A body that has arrived whole (most: it comes with the headers) is read without a timer,
    which would cost more than the read itself on a webhook."""
    if request.content.is_eof():
        return await read
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await read
    except TimeoutError:
        request.content.feed_eof()
        raise BodyTimeout(f"the request body did not arrive within {BODY_TIMEOUT:g} s") from None
