"""twilio-python's async HTTP client, running on the gateway's shared aiohttp session.

`AsyncTwilioHttpClient` would open its own `ClientSession` (or one per request), pass no
timeout unless asked, and authenticate through aiohttp's deprecated `auth=` argument. This
subclass keeps the library's request shape but sends every call through `context.http`
(fetched per request: the gateway owns that session), with a total timeout and the Basic
credentials as a header.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response

RETRY_AFTER: ContextVar[str | None] = ContextVar("twilio_retry_after", default=None)
"""The `Retry-After` of the last answer this task got: twilio-python's exceptions keep the
status and the error code but not the headers. A context variable, so concurrent sends (each
its own task) never see each other's."""


def _query(params: dict[str, object] | None) -> list[tuple[str, str]] | None:
    """Flatten twilio-python's query params (lists repeat the name) for aiohttp."""
    if not params:
        return None
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((name, str(v)) for v in values if v is not None)
    return pairs


class SharedSessionTwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """An `AsyncHttpClient` for `twilio.rest.Client(http_client=...)`."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], timeout: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self._session = session

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        allow_redirects: bool = False,
        **options: Any,
    ) -> Response:
        """Make one Twilio API request; aiohttp errors propagate for the caller to classify.

        twilio-python passes `timeout=` (seconds or None) among `options`; without one the
        client's own timeout applies.
        """
        seconds = options.get("timeout") or self.timeout
        sent_headers = dict(headers or {})
        if auth is not None:
            sent_headers["Authorization"] = aiohttp.encode_basic_auth(auth[0], auth[1])
        body: dict[str, Any] = {"data": data}
        if sent_headers.get("Content-Type") == "application/json":
            body = {"json": data}
        async with self._session().request(
            method.upper(),
            url,
            params=_query(params),
            headers=sent_headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
            allow_redirects=allow_redirects,
            **body,
        ) as resp:
            RETRY_AFTER.set(resp.headers.get("Retry-After"))
            return Response(resp.status, await resp.text(), resp.headers)
