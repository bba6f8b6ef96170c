"""Build the plugin manager: hook specs, entry points of group `gateway`, validation.

Built-in channels (web chat, WhatsApp, email) are registered through the same entry points as
third-party ones, so there is exactly one way a channel type reaches the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import cast

import pluggy

from gateway import hookspecs
from gateway.channels import ChannelConfig, ChannelType
from gateway.errors import ConfigError


def get_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Return a new manager; misspelt hooks and unknown hooks fail here (check_pending)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as exc:
            raise ConfigError(_failed_plugin(exc)) from exc
    pm.check_pending()
    return pm


def _failed_plugin(exc: Exception) -> str:
    """Which installed plugin could not be loaded, and why: the bare import error of one
    broken package would otherwise be all a user sees, for every command."""
    for entry_point in metadata.entry_points(group=hookspecs.PROJECT):
        try:
            entry_point.load()
        except Exception as error:
            dist = entry_point.dist
            shipped = f" from {dist.name} {dist.version}" if dist is not None else ""
            return (
                f"plugin {entry_point.name!r} ({entry_point.value}{shipped}) failed to load:"
                f" {type(error).__name__}: {error}; fix or uninstall it"
            )
    return f"a plugin failed to load: {type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class PluginInfo:
    channel_type: str
    version: str
    distribution: str
    description: str


def channel_types(pm: pluggy.PluginManager) -> dict[str, ChannelType]:
    """Collect every registered channel type by name; a name registered twice is an error."""
    found: dict[str, ChannelType] = {}
    for impl in pm.hook.register_channel_types.get_hookimpls():
        batch = impl.function()
        if not isinstance(batch, list | tuple) or not all(
            isinstance(t, ChannelType) for t in batch
        ):
            raise ConfigError(
                f"plugin {impl.plugin_name!r}: register_channel_types must return a list of"
                f" gateway.channels.ChannelType, not {type(batch).__name__}"
            )
        for channel_type in batch:
            if channel_type.name in found:
                raise ConfigError(f"channel type {channel_type.name!r} is registered twice")
            found[channel_type.name] = channel_type
    return found


def config_models(types: dict[str, ChannelType]) -> dict[str, type[ChannelConfig]]:
    return {name: t.config_model for name, t in types.items()}


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """List channel types with the version of the distribution that ships them."""
    dist_of: dict[int, str] = {}
    for plugin, facade in pm.list_plugin_distinfo():
        dist_of[id(plugin)] = f"{facade.project_name} {facade.version}"
    infos: list[PluginInfo] = []
    for impl in pm.hook.register_channel_types.get_hookimpls():
        shipped_by = dist_of.get(id(impl.plugin), "")
        registered = cast(list[ChannelType], impl.function())
        for channel_type in registered:
            infos.append(
                PluginInfo(
                    channel_type.name, channel_type.version, shipped_by, channel_type.description
                )
            )
    return sorted(infos, key=lambda i: i.channel_type)


def installed_version() -> str:
    try:
        return metadata.version("channel-gateway")
    except metadata.PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"
