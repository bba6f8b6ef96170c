"""The plugin registers the `whatsapp` channel type through the `gateway` pluggy project."""

from __future__ import annotations

import aiohttp
import pluggy
import pytest
from yarl import URL

import plugins.whatsapp as plugin
from gateway.channels import ChannelAdapter, ChannelType
from plugins.whatsapp import WhatsAppAdapter, WhatsAppConfig
from tests.whatsapp.support import make_context, meta_config, twilio_config

hookspec = pluggy.HookspecMarker("gateway")


class _Spec:
    @hookspec
    def register_channel_types(self) -> list[ChannelType]:  # type: ignore[empty-body]
        """The hook as the core declares it (project `gateway`)."""


def _types(pm: pluggy.PluginManager) -> list[ChannelType]:
    return [t for batch in pm.hook.register_channel_types() for t in batch]


def test_registers_through_pluggy() -> None:
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(_Spec)
    pm.register(plugin)
    pm.check_pending()
    (channel_type,) = _types(pm)
    assert channel_type.name == "whatsapp"
    assert channel_type.config_model is WhatsAppConfig
    assert channel_type.version == plugin.__version__
    assert channel_type.description


def test_registers_with_the_core_hookspecs() -> None:
    pluginmanager = pytest.importorskip("gateway.pluginmanager")
    pm = pluginmanager.get_plugin_manager(load_entry_points=False)
    pm.register(plugin)
    assert "whatsapp" in pluginmanager.channel_types(pm)


async def test_factory_builds_a_protocol_adapter(http_session: aiohttp.ClientSession) -> None:
    (channel_type,) = plugin.register_channel_types()
    for config in (twilio_config(), meta_config()):
        adapter = channel_type.factory(make_context(config, http_session))
        assert isinstance(adapter, ChannelAdapter)
        assert isinstance(adapter, WhatsAppAdapter)
        assert adapter.channel_type == "whatsapp"
        assert adapter.provider == config.provider
        assert adapter.name == config.name
        assert adapter.policy().reply_window == config.reply_window
        assert adapter.routes() == ()
        assert adapter.health().ok
        await adapter.start()
        await adapter.stop()


async def test_twilio_credentials_only_to_api_host(http_session: aiohttp.ClientSession) -> None:
    adapter = plugin.make_adapter(make_context(twilio_config(), http_session))
    headers_for = adapter._provider._auth_headers  # type: ignore[attr-defined]
    assert "Authorization" in headers_for(URL("https://api.twilio.com/2010-04-01/x"))
    assert headers_for(URL("https://media.twiliocdn.com/x")) == {}
    assert headers_for(URL("https://mms.twiliocdn.com/x")) == {}
