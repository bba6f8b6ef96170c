"""The multi-node set-up documented in docs/redis.md and the README is a valid configuration."""

from __future__ import annotations

import re

from gateway.config import parse_config
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from tests.multinode.conftest import ROOT


def yaml_blocks(path: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / path).read_text(), re.S)


def test_documented_redis_config_is_valid() -> None:
    (text,) = [b for b in yaml_blocks("docs/redis.md") if "store:" in b]
    models = config_models(channel_types(get_plugin_manager()))
    config = parse_config(text, "docs/redis.md", models, env={"WEBCHAT_SECRET": "s" * 32})
    assert config.store.backend == "redis"


def test_documented_redis_server_settings_are_the_no_loss_ones() -> None:
    text = (ROOT / "docs/redis.md").read_text()
    assert "appendfsync always" in text and "appendonly yes" in text
    readme = (ROOT / "README.md").read_text().split("## Several nodes on one Redis", 1)[1]
    assert "--appendonly yes --appendfsync always" in readme
