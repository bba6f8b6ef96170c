"""A third-party channel package, installed for real, is found, listed and validated."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest
from pydantic import BaseModel

from gateway.channels import BaseAdapter, ChannelConfig, ChannelType, SendResult
from gateway.errors import ConfigError, PluginError
from gateway.pluginmanager import channel_types, describe_plugins, get_plugin_manager

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


def _plugin_pm(plugin: object, name: str) -> pluggy.PluginManager:
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(plugin, name=name)
    return pm


class _Hooks:
    hookimpl = pluggy.HookimplMarker("gateway")


def test_a_registration_that_raises_is_named() -> None:
    class Exploding(_Hooks):
        @_Hooks.hookimpl
        def register_channel_types(self) -> list[ChannelType]:
            raise RuntimeError("hook exploded")

    with pytest.raises(
        PluginError,
        match="plugin 'exploding': register_channel_types failed: RuntimeError: hook exploded",
    ):
        channel_types(_plugin_pm(Exploding(), "exploding"))


class _Adapter(BaseAdapter):
    async def send(self, conversation: object, message: object) -> SendResult:
        return SendResult(provider_message_id="x")


class _Config(ChannelConfig):
    pass


class _PlainModel(BaseModel):
    name: str


class _NoSend:  # an adapter class written without BaseAdapter, missing most of the protocol
    def routes(self) -> list[object]:
        return []


@pytest.mark.parametrize(
    ("registered", "words"),
    [
        (ChannelType("acme", dict, _Adapter), "config_model must be a subclass of"),  # type: ignore[arg-type]
        (ChannelType("acme", _PlainModel, _Adapter), "config_model must be a subclass of"),  # type: ignore[arg-type]
        (ChannelType("acme", _Config, "AcmeAdapter"), "factory must be callable"),  # type: ignore[arg-type]
        (ChannelType("acme", _Config, _NoSend), "_NoSend lacks start, stop, handle_webhook, send"),  # type: ignore[arg-type]
    ],
)
def test_an_unusable_channel_type_is_named_before_any_config_is_read(
    registered: ChannelType, words: str
) -> None:
    """Ops audit: each of these listed fine, passed `gateway check`, and crashed `serve` (or
    `check`) with an AttributeError traceback naming no plugin."""

    class Careless(_Hooks):
        @_Hooks.hookimpl
        def register_channel_types(self) -> list[ChannelType]:
            return [registered]

    with pytest.raises(PluginError, match=re.escape("plugin 'careless': channel type 'acme'")):
        channel_types(_plugin_pm(Careless(), "careless"))
    with pytest.raises(PluginError, match=re.escape(words)):
        describe_plugins(_plugin_pm(Careless(), "careless"))


def test_a_channel_type_registered_twice_names_both_plugins() -> None:
    class Impostor(_Hooks):
        @_Hooks.hookimpl
        def register_channel_types(self) -> list[ChannelType]:
            return [ChannelType("webchat", _Config, _Adapter)]

    pm = get_plugin_manager()
    pm.register(Impostor(), name="impostor")
    with pytest.raises(PluginError) as info:
        channel_types(pm)
    assert "'webchat' is registered twice" in info.value.message
    assert "plugin 'webchat' (channel-gateway" in info.value.message
    assert "plugin 'impostor'" in info.value.message


def _installed(tmp_path: Path, module: str, source: str) -> dict[str, str]:
    """A plugin package installed as pip leaves one (module + dist-info with the entry point),
    on PYTHONPATH for a `gateway` subprocess."""
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}-0.9.dist-info"
    info.mkdir()
    dist = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.9\n")
    (info / "entry_points.txt").write_text(f"[gateway]\n{module} = {module}\n")
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}


def test_every_command_names_a_plugin_whose_registration_raises(tmp_path: Path) -> None:
    env = _installed(
        tmp_path,
        "aud_hookraise",
        textwrap.dedent(
            """
            import pluggy
            hookimpl = pluggy.HookimplMarker("gateway")

            @hookimpl
            def register_channel_types():
                raise RuntimeError("hook exploded")
            """
        ),
    )
    config = tmp_path / "config.yaml"
    config.write_text((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    for command in (["plugins"], ["check", "--config", str(config)]):
        result = run(*command, env=env, cwd=tmp_path)
        assert result.returncode == 1, result
        assert result.stderr.startswith("gateway: plugin error: plugin 'aud_hookraise'")
        assert "(aud-hookraise 0.9)" in result.stderr and "hook exploded" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        (
            "raise RuntimeError('factory exploded')",
            "could not make the adapter: RuntimeError: factory exploded",
        ),
        ("return object()", "its plugin's adapter (object) lacks routes, start, stop"),
    ],
)
def test_serve_names_a_channel_whose_adapter_cannot_be_made(
    tmp_path: Path, factory: str, words: str
) -> None:
    """A factory (not a class: it can only be checked by calling it) that raises or returns
    something else: one line naming the channel, exit 1 (ops audit: a raw traceback)."""
    env = _installed(
        tmp_path,
        "aud_factory",
        textwrap.dedent(
            f"""
            from typing import Literal
            import pluggy
            from gateway.channels import ChannelConfig, ChannelType
            hookimpl = pluggy.HookimplMarker("gateway")

            class Config(ChannelConfig):
                type: Literal["aud_sms"] = "aud_sms"

            def make(context):
                {factory}

            @hookimpl
            def register_channel_types():
                return [ChannelType("aud_sms", Config, make, "0.9")]
            """
        ),
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f'store: {{url: "sqlite:///{tmp_path / "gw.db"}"}}\n'
        "channels: [{name: sms, type: aud_sms}]\n"
        "queues: [{name: support}]\nrouting: [{queue: support}]\n"
    )
    assert run("check", "--config", str(config), env=env, cwd=tmp_path).returncode == 0
    result = run("serve", "--config", str(config), "--port", "1", env=env, cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr.startswith("gateway: channel 'sms' (aud_sms): its plugin")
    assert words in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("raised", [SystemExit(0), GeneratorExit()])
def test_a_registration_that_exits_is_a_plugin_error_not_a_silent_end(
    raised: BaseException,
) -> None:
    """Re-audit: a hook raising SystemExit(0) made check and serve exit 0 with no output."""

    class Quitter(_Hooks):
        @_Hooks.hookimpl
        def register_channel_types(self) -> list[ChannelType]:
            raise raised

    with pytest.raises(PluginError, match="plugin 'quitter': register_channel_types failed"):
        channel_types(_plugin_pm(Quitter(), "quitter"))


@pytest.mark.parametrize("name", [123, "", "sms type", "-sms"])
def test_a_channel_type_name_must_be_a_word(name: object) -> None:
    """Re-audit: a name of 123 crashed every command sorting the types; "" was accepted."""

    class Careless(_Hooks):
        @_Hooks.hookimpl
        def register_channel_types(self) -> list[ChannelType]:
            return [ChannelType(name, _Config, _Adapter)]  # type: ignore[arg-type]

    with pytest.raises(PluginError, match="a channel type's name must be a word"):
        channel_types(_plugin_pm(Careless(), "careless"))


def test_plugins_takes_config_as_every_command_does() -> None:
    result = run("plugins", "--config", "no-such.yaml")
    assert result.returncode == 0, result.stderr
    assert "webchat" in result.stdout
