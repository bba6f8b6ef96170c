"""`gateway email backfill --channel NAME [--since YYYY-MM-DD]`: import older mail on request.

The live reader starts after the newest mail present (`first_sync: new`), so a mailbox that
already holds customer mail is imported on purpose, once, with this command. It runs with the
gateway's own opened store and ingest path (`gateway.channels.CommandContext`), so the mail
lands in the same conversations, deduplicated against what the live reader stored, and its
resume cursor lives in the same key-value store. A progress bar goes to stderr, the summary to
stdout; every user error is one line on stderr: exit status 2 for the command line (unknown
channel, not an email channel, bad date), 1 for a mailbox it cannot read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.channels import Command, CommandContext
from plugins.email.backfill import backfill, parse_since
from plugins.email.config import EmailConfig
from plugins.email.imap import ImapError

PROG = "gateway email backfill"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments (`--config` is added by the gateway)."""
    parser.add_argument("--channel", required=True, help="name of the email channel instance")
    parser.add_argument(
        "--since",
        default=None,
        metavar="YYYY-MM-DD",
        help="only mail received on or after this date (default: the whole mailbox)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not draw the progress bar on stderr"
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


USAGE = 2
"""The exit status of a command line naming what the config lacks, or malformed (as argparse
and `gateway route` do); 1 is for what went wrong doing it."""


def _email_channel(config: Any, name: str) -> EmailConfig | str:
    """Return the named channel's config, or the error to show when it is not an email one."""
    channels = list(getattr(config, "channels", ()))
    found = next((c for c in channels if c.name == name), None)
    if found is None:
        known = ", ".join(c.name for c in channels if c.type == "email") or "none"
        return f"no channel named {name!r} (email channels: {known})"
    if not isinstance(found, EmailConfig):
        return f"channel {name!r} is of type {found.type!r}, not email"
    return found


async def run(args: argparse.Namespace, context: CommandContext) -> int:
    """Run the backfill; return the process exit status."""
    channel = _email_channel(context.config, args.channel)
    if isinstance(channel, str):
        return _fail(channel, USAGE)
    try:
        since = parse_since(args.since)
    except ValueError:
        return _fail(f"--since {args.since!r} is not a date (expected YYYY-MM-DD)", USAGE)
    try:
        imported = await backfill(
            channel,
            context.inbound,
            context.store,
            since,
            progress=not args.no_progress,
            clock=context.clock,
            history=context.store,
        )
    except (ImapError, OSError, TimeoutError) as exc:
        # ImapError texts never quote our commands, so no password can appear here.
        detail = str(exc) or type(exc).__name__
        return _fail(f"cannot read the mailbox of {channel.name!r}: {detail}")
    scope = f" since {since.isoformat()}" if since else ""
    print(f"{channel.name}: imported {imported} new message(s){scope}")
    return 0


def backfill_command() -> Command:
    """The `Command` the plugin registers through the `register_commands` hook."""
    return Command(
        words=("email", "backfill"),
        help="import older mail of an email channel (resumable, idempotent)",
        configure=configure,
        run=run,
    )
