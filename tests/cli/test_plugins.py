"""A third-party channel package, installed for real, is found, listed and validated."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

from gateway.errors import ConfigError
from gateway.pluginmanager import channel_types, get_plugin_manager

PLUGIN = '''
"""A throwaway SMS channel used to prove third parties can add channel types."""

from typing import Literal

import pluggy
from pydantic import SecretStr

from gateway.channels import BaseAdapter, ChannelConfig, ChannelType, SendResult

hookimpl = pluggy.HookimplMarker("gateway")


class AcmeConfig(ChannelConfig):
    type: Literal["acme_sms"] = "acme_sms"
    api_key: SecretStr
    sender: str


class AcmeAdapter(BaseAdapter):
    channel_type = "acme_sms"
    provider = "acme"

    async def send(self, conversation, message):
        return SendResult(provider_message_id=message.id)


@hookimpl
def register_channel_types():
    return [ChannelType("acme_sms", AcmeConfig, AcmeAdapter, "2.3.4", "ACME SMS")]
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-gateway-sms"
version = "2.3.4"

[project.entry-points.gateway]
acme_sms = "acme_gateway_sms"
"""


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Install the package into its own target dir and put it on PYTHONPATH for subprocesses."""
    src = tmp_path_factory.mktemp("acme")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "acme_gateway_sms.py").write_text(PLUGIN)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        timeout=120,
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(root)])}
    yield env


def test_third_party_channel_is_listed(installed_plugin: dict[str, str]) -> None:
    result = run("plugins", env=installed_plugin)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    line = next(row for row in lines if row.startswith("acme_sms"))
    assert "2.3.4" in line and "acme-gateway-sms" in line
    for builtin in ("webchat", "whatsapp", "email"):
        assert any(row.startswith(builtin) for row in lines), builtin


def test_third_party_config_is_validated(installed_plugin: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        textwrap.dedent("""
        channels:
          - {name: sms, type: acme_sms, api_key: "${ACME_KEY}", sender: "+15550001"}
        queues: [{name: support}]
        routing: [{queue: support}]
    """)
    )
    env = {**installed_plugin, "ACME_KEY": "super-secret-acme-key"}
    result = run("check", "--config", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert "sms" in result.stdout and "acme_sms" in result.stdout
    assert "super-secret-acme-key" not in result.stdout + result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""
        channels:
          - {name: sms, type: acme_sms, api_key: "${ACME_KEY}", sendr: "+15550001"}
        queues: [{name: support}]
    """)
    )
    result = run("check", "--config", str(bad), env=env)
    assert result.returncode == 1
    assert "channels[0].sendr" in result.stderr and "channels[0].sender" in result.stderr
    assert "Traceback" not in result.stderr
    assert "super-secret-acme-key" not in result.stdout + result.stderr


def test_misspelt_hook_is_caught_at_start_up() -> None:
    class Sloppy:
        hookimpl = pluggy.HookimplMarker("gateway")

        @hookimpl
        def register_channel_type(self) -> list[object]:  # missing "s"
            return []

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Sloppy())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_builtins_come_through_entry_points() -> None:
    pm = get_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"webchat", "whatsapp", "email"} <= names
    assert {"webchat", "whatsapp", "email"} <= set(channel_types(pm))


def test_a_plugin_that_cannot_load_is_named(tmp_path: Path) -> None:
    """One broken package (a missing dependency) stops every command: the error must say which
    plugin, from which distribution, and why."""
    (tmp_path / "acme_broken.py").write_text('raise ImportError("missing dep acme_sdk")\n')
    info = tmp_path / "acme_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gateway]\nbroken_sms = acme_broken\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    result = run("plugins", env=env)
    assert result.returncode != 0
    assert "plugin 'broken_sms' (acme_broken from acme-broken 1.0) failed to load" in result.stderr
    assert "missing dep acme_sdk" in result.stderr and "Traceback" not in result.stderr


def test_a_hook_that_returns_something_else_is_named() -> None:
    class Careless:
        hookimpl = pluggy.HookimplMarker("gateway")

        @hookimpl
        def register_channel_types(self) -> object:
            return {"acme_sms": "AcmeAdapter"}

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Careless(), name="careless")
    with pytest.raises(ConfigError, match="plugin 'careless': register_channel_types must"):
        channel_types(pm)
