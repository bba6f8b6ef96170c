"""The built-in web chat channel, registered through the `gateway` entry point group."""

from __future__ import annotations

import pluggy

from gateway.channels import ChannelAdapter, ChannelContext, ChannelType
from plugins.webchat.adapter import WebchatAdapter
from plugins.webchat.config import WebchatConfig

hookimpl = pluggy.HookimplMarker("gateway")

VERSION = "1.0.0"


def make_adapter(context: ChannelContext) -> ChannelAdapter:
    return WebchatAdapter(context)


@hookimpl
def register_channel_types() -> list[ChannelType]:
    return [
        ChannelType(
            name="webchat",
            config_model=WebchatConfig,
            factory=make_adapter,
            version=VERSION,
            description="Web chat widget served by the gateway (WebSocket)",
        )
    ]
