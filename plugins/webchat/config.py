"""The web chat channel's config section."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr

from gateway.channels import ChannelConfig
from gateway.durations import PositiveDuration, TimerDuration
from gateway.ratelimit import Rate


class WebchatConfig(ChannelConfig):
    """A web chat instance: who may embed it, how long visitors wait for an agent.

    `allowed_origins` lists the sites whose pages may open sessions and sockets (exact
    `scheme://host[:port]`, or `"*"`); the gateway's own pages are always allowed. `secret`
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
    allowed_origins: list[str] = Field(default_factory=list)
    secret: SecretStr | None = None
    token_ttl: PositiveDuration = timedelta(days=30)
    max_text: int = Field(default=4096, ge=1, le=65536)
    title: str = "Chat with us"
    session_rate_limit: Rate | None = "60/minute"
    message_rate_limit: Rate | None = "30/minute"
    max_sockets_per_visitor: int | None = Field(default=8, ge=1)
    max_sockets_per_address: int | None = Field(default=200, ge=1)
