"""Registration through pluggy, config validation and the reconnect backoff."""

from __future__ import annotations

import argparse
from typing import Any

import pluggy
import pytest
from pydantic import ValidationError

import plugins.email as email_plugin
from gateway import hookspecs
from gateway.channels import ChannelAdapter
from plugins.email.backoff import Backoff
from plugins.email.config import EmailConfig
from tests.email.conftest import email_config

IMAP = {"host": "imap.example.com", "username": "u", "password": "p"}
SMTP = {"host": "smtp.example.com"}


class Specs:
    @pluggy.HookspecMarker("gateway")
    def register_channel_types(self) -> list[Any]:  # type: ignore[empty-body]
        """Spec stand-in, the same name and shape as gateway.hookspecs."""


def test_registers_email_type_through_pluggy() -> None:
    manager = pluggy.PluginManager("gateway")
    manager.add_hookspecs(Specs)
    manager.register(email_plugin)
    [types] = manager.hook.register_channel_types()
    [channel_type] = types
    assert channel_type.name == "email"
    assert channel_type.config_model is EmailConfig
    assert channel_type.version == email_plugin.__version__


def test_registers_the_backfill_command_through_pluggy() -> None:
    manager = pluggy.PluginManager("gateway")
    manager.add_hookspecs(hookspecs)
    manager.register(email_plugin)
    [[command]] = manager.hook.register_commands()
    assert command.words == ("email", "backfill")
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(["--channel", "support-mail", "--since", "2026-11-01"])
    assert (args.channel, args.since, args.no_progress) == ("support-mail", "2026-11-01", False)
    with pytest.raises(SystemExit):  # --channel is required
        parser.parse_args([])


async def test_factory_builds_an_adapter(make_adapter: Any) -> None:
    adapter = make_adapter(email_config(IMAP, SMTP))
    assert isinstance(adapter, ChannelAdapter)
    assert (adapter.channel_type, adapter.provider, adapter.name) == (
        "email",
        "imap",
        "support-mail",
    )
    assert adapter.policy().reply_window is None
    assert not adapter.health().ok  # not started: not connected


def test_config_defaults() -> None:
    config = email_config(IMAP, SMTP)
    assert config.imap.tls == "implicit" and config.imap.port == 993
    assert config.imap.mailbox == "INBOX"
    assert config.imap.poll_interval.total_seconds() == 60
    assert config.imap.idle_timeout.total_seconds() == 5 * 60
    assert config.smtp.tls == "starttls"
    assert config.max_attachment_bytes == 25 * 1024 * 1024
    assert config.domain == "gw.example.com"
    assert "p" not in repr(config.imap.password)


@pytest.mark.parametrize(
    "change",
    [
        {"address": "not-an-address"},
        {"address": "a@b@c"},
        {"surprise": 1},
        {"imap": {**IMAP, "tls": "maybe"}},
        {"imap": {**IMAP, "unknown": 1}},
        {"smtp": {**SMTP, "port": 70000}},
        {"imap": {**IMAP, "poll_interval": "soon"}},
    ],
)
def test_config_refuses_bad_values(change: dict[str, Any]) -> None:
    data: dict[str, Any] = {
        "name": "support-mail",
        "type": "email",
        "address": "support@gw.example.com",
        "imap": IMAP,
        "smtp": SMTP,
    }
    data.update(change)
    with pytest.raises(ValidationError):
        EmailConfig.model_validate(data)


def test_config_durations_and_reply_window() -> None:
    config = email_config(
        {**IMAP, "poll_interval": "30s", "idle_timeout": "10m"}, SMTP, reply_window="72h"
    )
    assert config.imap.poll_interval.total_seconds() == 30
    assert config.policy().reply_window is not None
    # A mail's Date is the sender's clock: the window runs from when it reached us.
    assert config.policy().window_from_arrival


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(initial=1.0, cap=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    jittery = Backoff(initial=1.0, cap=100.0, jitter=0.1, rand=lambda: 1.0)
    assert jittery.next_delay() == pytest.approx(1.1)
