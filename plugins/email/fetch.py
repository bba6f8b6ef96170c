"""Fetch an agent's outbound attachment without becoming a way into the private network.

The email channel downloads each outbound attachment from the URL the agent gave, from the
gateway's own network position. Unchecked, an agent (or a stolen agent token) could have it
fetch `http://127.0.0.1:6379`, a cloud metadata endpoint or an internal admin page, and mail
the answer anywhere. So:

- hosts listed in the channel's `attachment_hosts` (your own file server, exact name or
  `.suffix`) are fetched wherever they are;
- any other host must resolve to public (global) addresses only. The check is the resolver of
  the session that connects, so the connection uses exactly the addresses that passed it (a DNS
  answer that changes in between, "rebinding", gains nothing); an IP literal is checked as is;
- redirects are followed by hand, at most `MAX_REDIRECTS`, each hop checked the same way.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from gateway.errors import PermanentChannelError

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


_EMBEDDING = (
    IPv6Network("::/96"),  # IPv4-compatible (deprecated): ::127.0.0.1
    IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix
    IPv6Network("64:ff9b:1::/48"),  # NAT64, local-use prefix
)


def is_public(address: IPv4Address | IPv6Address) -> bool:
    """Global, and so is any IPv4 address it carries: `ipaddress` calls `::127.0.0.1` and
    `64:ff9b::a9fe:a9fe` (NAT64 to 169.254.169.254) global, yet they reach the host inside."""
    if not address.is_global:
        return False
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _EMBEDDING):
            embedded = IPv4Address(int(address) & 0xFFFFFFFF)
        if address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and not embedded.is_global:
            return False
    return True


class NotPublic(OSError):
    """The host resolved only to private, loopback, link-local or reserved addresses."""


def _refused(error: BaseException) -> NotPublic | None:
    """Our resolver's refusal, however aiohttp wrapped it on the way up."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, NotPublic):
            return seen
        seen = seen.__cause__ or getattr(seen, "os_error", None)
    return None


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, keeping only global addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        public = [a for a in answers if is_public(ip_address(a["host"]))]
        if not public:
            raise NotPublic(f"{host} has no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def listed(host: str, patterns: Sequence[str]) -> bool:
    """`files.example.com` matches itself; `.example.com` matches any subdomain of it."""
    host = host.lower().rstrip(".")
    return any(
        host.endswith(pattern.lower()) if pattern.startswith(".") else host == pattern.lower()
        for pattern in patterns
    )


class AttachmentFetcher:
    """Opens the response of an attachment URL through the right session (see module doc)."""

    def __init__(self, trusted_hosts: Sequence[str], shared: Callable[[], aiohttp.ClientSession]):
        self._trusted = tuple(trusted_hosts)
        self._shared = shared
        self._public: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._public is not None:
            await self._public.close()
            self._public = None

    def _session_for(self, url: URL) -> aiohttp.ClientSession:
        host = url.host
        if url.scheme not in ("http", "https") or not host:
            raise PermanentChannelError("email: an attachment url is an absolute http(s) URL")
        if listed(host, self._trusted):
            return self._shared()
        try:
            literal = ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not is_public(literal):
            raise PermanentChannelError(
                f"email: refusing to fetch an attachment from the private address {host}"
                " (list the host in attachment_hosts to allow it)"
            )
        if self._public is None:
            connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
            self._public = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            )
        return self._public

    async def open(self, raw_url: str) -> aiohttp.ClientResponse:
        """The final response for `raw_url` (the caller reads and releases it)."""
        url = URL(raw_url)
        for _ in range(MAX_REDIRECTS + 1):
            session = self._session_for(url)
            try:
                response = await session.get(url, allow_redirects=False)
            except (aiohttp.ClientError, OSError) as exc:
                if _refused(exc) is None:
                    raise
                raise PermanentChannelError(
                    f"email: refusing to fetch an attachment from {url.host}: it has no public"
                    " address (list it in attachment_hosts to allow it)"
                ) from None
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise PermanentChannelError("email: attachment fetch: a redirect without Location")
            url = url.join(URL(location))
        raise PermanentChannelError(f"email: attachment fetch: more than {MAX_REDIRECTS} redirects")
