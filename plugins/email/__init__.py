"""The built-in `email` channel type: IMAP in (IDLE, persisted UID cursor), SMTP out.

Registered through the `gateway` entry point group like any third-party channel; it also
contributes the `gateway email backfill --channel NAME [--since YYYY-MM-DD]` command.

What the core gives `send(conversation, message)` (all optional):

- `message.extra["thread"]`: `{"in_reply_to": <the conversation's last inbound provider id>,
  "references": [every provider id of the conversation, in order, ours included, last 50],
  "subject": ...}`; the reply's In-Reply-To is `in_reply_to` and its References that list
  (preceded by the References of the mail answered, when the channel stored it: a reply that
  opened a new conversation keeps the older chain), ids that are not Message-IDs dropped;
- the same keys flat (`message.extra["in_reply_to"]`, `["references"]`), for callers that
  set them directly; used when `thread` is absent or empty;
- `message.extra["subject"]`: an explicit subject, kept verbatim (else
  `Re: <conversation.subject>`);
- `message.extra["html"]`: an HTML body (else one is rendered from `message.text`);
- `message.attachments[*].url`: where to download each outbound file: a host in the channel's
  `attachment_hosts`, or one with public addresses only (see `plugins.email.fetch`).

Without any of these threading facts, the adapter threads on the newest mail it stored from
that address.
"""

from __future__ import annotations

import pluggy

from gateway.channels import ChannelType, Command
from plugins.email.adapter import EmailAdapter, make_adapter
from plugins.email.backfill import backfill
from plugins.email.command import backfill_command
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


@hookimpl
def register_commands() -> list[Command]:
    """Contribute `gateway email backfill` (see `plugins.email.command`)."""
    return [backfill_command()]


__all__ = [
    "EmailAdapter",
    "EmailConfig",
    "ParsedEmail",
    "backfill",
    "hookimpl",
    "make_adapter",
    "parse_email",
    "register_channel_types",
    "register_commands",
]
