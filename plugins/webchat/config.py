"""The web chat channel's config section."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator

from gateway.channels import ChannelConfig
from gateway.durations import PositiveDuration, TimerDuration
from gateway.ratelimit import Rate

_AUTHORITY = re.compile(
    r"(?P<host>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_EXAMPLE = "such as https://shop.example.com"

MIN_SECRET_LENGTH = 32
"""A visitor holds a token signed with the secret, so a short secret can be guessed offline
from it, and then any visitor's token forged; the generated one has 43 characters."""


def check_origin(value: str) -> str:
    """Accept an origin only as a browser sends it in `Origin` (`scheme://host[:port]`, lower
    case, no default port, no path), or `*`: origins are compared as exact text, so any other
    spelling (`shop.example.com`, `https://shop.example.com/`) would load and then refuse
    every visitor of that site with `origin_not_allowed`."""
    if value == "*":
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError(f'an origin starts with its scheme, {_EXAMPLE} (or "*": any site)')
    if scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError(f"expected an http:// or https:// origin, {_EXAMPLE}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if authority != rest:
        raise ValueError(
            "an origin has no path (not even '/'), query or fragment:"
            f" scheme://host[:port], {_EXAMPLE}"
        )
    if "@" in authority:
        raise ValueError(f"an origin has no user or password: scheme://host[:port], {_EXAMPLE}")
    if value != value.lower():
        raise ValueError("write the origin in lower case, as browsers send it")
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise ValueError(f"expected an origin {_EXAMPLE}: scheme://host[:port]")
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError("an origin's port is 1 to 65535")
    if port is not None and int(port) == _DEFAULT_PORTS[scheme]:
        raise ValueError(f"leave out the default port :{port}: browsers send the origin without it")
    return value


Origin = Annotated[str, AfterValidator(check_origin)]


class WebchatConfig(ChannelConfig):
    """A web chat instance: who may embed it, how long visitors wait for an agent.

    `allowed_origins` lists the sites whose pages may open sessions and sockets (exact
    `scheme://host[:port]` as browsers send it, checked at load, or `"*"`); the gateway's own
    pages are always allowed. `secret`
    signs visitor tokens; without it a random secret is generated once and kept in the store,
    so tokens stay valid across restarts and nodes.

    Anyone can call a public chat, so two rates bound what one client can make it do (`null`
    turns one off): `session_rate_limit` per client address on opening or resuming sessions
    (generous: visitors behind one office NAT share an address; set `server.trusted_proxies`
    behind a load balancer), `message_rate_limit` per visitor on messages. On the Redis store
    they hold for the whole cluster. Open sockets are capped per node, per visitor (several
    tabs: `max_sockets_per_visitor`) and per client address (`max_sockets_per_address`): the
    next one is refused with 429 `too_many_connections` instead of using up the process's file
    descriptors.
    """

    type: Literal["webchat"] = "webchat"
    no_agent_timeout: TimerDuration | None = timedelta(minutes=5)
    allowed_origins: list[Origin] = Field(default_factory=list)
    secret: SecretStr | None = None
    token_ttl: PositiveDuration = timedelta(days=30)
    max_text: int = Field(default=4096, ge=1, le=65536)
    title: str = "Chat with us"
    session_rate_limit: Rate | None = "60/minute"
    message_rate_limit: Rate | None = "30/minute"
    max_sockets_per_visitor: int | None = Field(default=8, ge=1)
    max_sockets_per_address: int | None = Field(default=200, ge=1)

    @field_validator("secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"a signing secret needs at least {MIN_SECRET_LENGTH} characters (python -c"
                ' "import secrets; print(secrets.token_urlsafe(32))"), or leave it out to have'
                " one generated and kept in the store"
            )
        return value
