"""The built-in `email` channel type: IMAP in (IDLE, persisted UID cursor), SMTP out.

Registered through the `gateway` entry point group like any third-party channel.

What the core gives `send(conversation, message)` (all optional):

- `message.extra["in_reply_to"]`: the Message-ID (`<id>`) of the customer mail being answered,
  normally the `provider_message_id` of the conversation's last inbound email;
- `message.extra["references"]`: that mail's own thread ids (its `thread_refs`, a list);
- `message.extra["subject"]`: an explicit subject (else `Re: <conversation.subject>`);
- `message.extra["html"]`: an HTML body (else one is rendered from `message.text`);
- `message.attachments[*].url`: where to download each outbound file (via `context.http`).

Without `in_reply_to`, the adapter threads on the newest mail it stored from that address.
"""

from __future__ import annotations

import pluggy

from gateway.channels import ChannelType
from plugins.email.adapter import EmailAdapter, make_adapter
from plugins.email.backfill import backfill
from plugins.email.config import EmailConfig
from plugins.email.parse import ParsedEmail, parse_email

hookimpl = pluggy.HookimplMarker("gateway")

__version__ = "0.1.0"


@hookimpl
def register_channel_types() -> list[ChannelType]:
    """Register the `email` channel type."""
    return [
        ChannelType(
            name="email",
            config_model=EmailConfig,
            factory=make_adapter,
            version=__version__,
            description="Email: IMAP (IDLE, UID cursor) in, SMTP out, threaded replies",
        )
    ]


__all__ = [
    "EmailAdapter",
    "EmailConfig",
    "ParsedEmail",
    "backfill",
    "hookimpl",
    "make_adapter",
    "parse_email",
    "register_channel_types",
]
