"""What a third-party channel gets by default from `BaseAdapter`, seen through the agent API.

Templates are WhatsApp's: a channel that does not say it delivers them must not be handed one
(its `send` would post an empty text, as an audit's SMS plugin written from the docs did).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.channels import BaseAdapter, ChannelConfig, ChannelContext, ChannelType, SendResult
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.model import Contact, Conversation, InboundMessage, Message
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from tests.api.conftest import TOKENS, sha


class PlainConfig(ChannelConfig):
    pass


class PlainAdapter(BaseAdapter):
    """A minimal third-party channel: only what BaseAdapter gives, plus a send that records."""

    channel_type = "plain_sms"
    provider = "plain"

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.sent: list[Message] = []

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        self.sent.append(message)
        return SendResult(provider_message_id=f"plain-{message.id}")


CONFIG = f"""
store: {{url: "sqlite:///{{db}}"}}
channels: [{{name: sms, type: plain_sms}}]
queues: [{{name: support}}]
routing: [{{queue: support}}]
agents:
  - {{id: maria, token_sha256: "{sha(TOKENS["maria"])}", queues: [support]}}
"""


async def test_a_channel_that_does_not_say_it_sends_templates_is_not_given_one(
    tmp_path: Path,
) -> None:
    types = {
        **channel_types(get_plugin_manager()),
        "plain_sms": ChannelType("plain_sms", PlainConfig, PlainAdapter, "1.0", "test"),
    }
    text = CONFIG.replace("{db}", str(tmp_path / "gw.db"))
    config = parse_config(text, "config.yaml", config_models(types), env={})
    clock = ManualClock()
    app = create_app(config, types, clock=clock)
    async with TestClient(TestServer(app)) as client:
        runtime = app[RUNTIME]
        result = await runtime.ingestor.message(
            InboundMessage(
                channel="sms",
                channel_type="plain_sms",
                provider="plain",
                provider_message_id="in-1",
                contact=Contact("+15550001"),
                sent_at=clock.now(),
                text="hola",
            )
        )
        path = f"/api/v1/conversations/{result.conversation.id}"
        headers = {"Authorization": f"Bearer {TOKENS['maria']}"}
        assert (await client.post(f"{path}/accept", headers=headers)).status == 200
        template = {"template": {"name": "welcome", "language": "es", "params": []}}
        resp = await client.post(f"{path}/messages", json=template, headers=headers)
        assert resp.status == 400
        assert "has no templates" in (await resp.json())["error"]["message"]
        resp = await client.post(f"{path}/messages", json={"text": "hola"}, headers=headers)
        assert resp.status == 202
        await runtime.outbound.drain()
        adapter = runtime.adapters["sms"]
        assert isinstance(adapter, PlainAdapter)
        assert [m.text for m in adapter.sent] == ["hola"]
