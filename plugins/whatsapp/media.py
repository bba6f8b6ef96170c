"""Download provider media without becoming an open proxy (SSRF guard).

Media URLs arrive in customer-controlled webhooks and in provider API answers; fetching
whatever URL we are handed would let anyone make the gateway call internal addresses. So every
URL, including each redirect hop, must be on the provider's host list (or the configured
`api_base_url` host, which is how tests point at stand-in servers), and credentials are only
ever sent to the hosts that need them. On a provider's API host itself, where a request carries
the account's credentials, only the provider's media paths may be fetched: any other path there
would hand an agent whatever the API answers to the account (Twilio's message log, say) for a
media URL a signed webhook named.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from yarl import URL

from gateway.errors import PermanentChannelError, TransientChannelError

TWILIO_API_HOST = "api.twilio.com"
TWILIO_MEDIA_HOSTS = (
    TWILIO_API_HOST,
    "media.twiliocdn.com",
    "mms.twiliocdn.com",
    ".twiliocdn.com",
)
META_MEDIA_HOSTS = ("lookaside.fbsbx.com", ".fbcdn.net", ".whatsapp.net")

MAX_MEDIA_BYTES = 100 * 1024 * 1024  # WhatsApp's largest media (documents) is 100 MB.
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Media:
    """Downloaded media: the bytes and the type the provider declared."""

    data: bytes
    mime_type: str | None


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which URLs may be fetched: https on the listed hosts, or anything on `base_url`'s origin.

    A pattern starting with `.` matches any subdomain (`.fbcdn.net` matches `scontent.fbcdn.net`).
    """

    hosts: tuple[str, ...]
    base_url: str | None = None
    api_hosts: tuple[str, ...] = ()
    """The provider's API hosts besides `base_url`'s origin: requests there carry credentials."""
    api_path: re.Pattern[str] | None = None
    """On `base_url`'s origin and `api_hosts`, the only paths that may be fetched (if set)."""

    def _is_base(self, url: URL) -> bool:
        if self.base_url is None:
            return False
        base = URL(self.base_url)
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def _api_path_ok(self, url: URL) -> bool:
        return self.api_path is None or self.api_path.fullmatch(url.path) is not None

    def allows(self, url: URL) -> bool:
        if url.user is not None or url.password is not None:
            return False
        if self._is_base(url):
            return self._api_path_ok(url)
        host = (url.host or "").lower().rstrip(".")
        if url.scheme != "https" or url.port != 443 or not host:
            return False
        if host in self.api_hosts:
            return self._api_path_ok(url)
        return any(
            host.endswith(pattern) if pattern.startswith(".") else host == pattern
            for pattern in self.hosts
        )

    def check(self, raw: str) -> URL:
        """Return the parsed URL, or raise PermanentChannelError naming only the host."""
        try:
            url = URL(raw)
        except (TypeError, ValueError):
            raise PermanentChannelError("media URL is not a valid URL") from None
        if not url.is_absolute() or not self.allows(url):
            if url.is_absolute() and self._is_api(url):
                raise PermanentChannelError(
                    f"refusing to fetch {url.path!r} from the provider's API: not a media path"
                )
            raise PermanentChannelError(f"refusing to fetch media from host {url.host!r}")
        return url

    def _is_api(self, url: URL) -> bool:
        host = (url.host or "").lower().rstrip(".")
        return self._is_base(url) or (url.scheme == "https" and host in self.api_hosts)


HeadersFor = Callable[[URL], Mapping[str, str]]


async def download(
    session: aiohttp.ClientSession,
    raw_url: str,
    *,
    policy: HostPolicy,
    headers_for: HeadersFor,
    time_limit: timedelta,
    max_bytes: int = MAX_MEDIA_BYTES,
) -> Media:
    """GET `raw_url`, following up to three redirects, each re-checked against `policy`."""
    url = policy.check(raw_url)
    client_timeout = aiohttp.ClientTimeout(total=time_limit.total_seconds())
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(
                url, headers=dict(headers_for(url)), allow_redirects=False, timeout=client_timeout
            ) as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    url = policy.check(str(url.join(URL(resp.headers["Location"]))))
                    continue
                raise_for_media_status(resp.status, url)
                data = await _read_capped(resp, max_bytes)
                return Media(data=data, mime_type=resp.content_type or None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientChannelError(f"media download failed: {type(exc).__name__}") from None
    raise PermanentChannelError("media download redirected too many times")


def raise_for_media_status(status: int, url: URL) -> None:
    """Classify a media response: 429/5xx retry later, other non-2xx give up."""
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise TransientChannelError(f"media host {url.host} answered {status}")
    raise PermanentChannelError(f"media host {url.host} answered {status}")


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise PermanentChannelError(f"media larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise PermanentChannelError(f"media larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
