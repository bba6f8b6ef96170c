"""The `whatsapp` channel type: WhatsApp through Twilio or Meta's Cloud API.

Registered through the `gateway` entry point group like any third-party channel; the core
calls `register_channel_types()` and builds one `WhatsAppAdapter` per configured instance.
"""

from __future__ import annotations

import pluggy

from gateway.channels import ChannelType
from plugins.whatsapp.adapter import WhatsAppAdapter, make_adapter
from plugins.whatsapp.config import WhatsAppConfig

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("gateway")

__all__ = [
    "WhatsAppAdapter",
    "WhatsAppConfig",
    "hookimpl",
    "make_adapter",
    "register_channel_types",
]


@hookimpl
def register_channel_types() -> list[ChannelType]:
    """Declare the `whatsapp` channel type to the gateway."""
    return [
        ChannelType(
            name="whatsapp",
            config_model=WhatsAppConfig,
            factory=make_adapter,
            version=__version__,
            description="WhatsApp via Twilio or Meta's Cloud API (signed webhooks, 24 h window)",
        )
    ]
