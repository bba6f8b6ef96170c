"""Build the plugin manager: hook specs, entry points of group `gateway`, validation.

Built-in channels (web chat, WhatsApp, email) are registered through the same entry points as
third-party ones, so there is exactly one way a channel type reaches the gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

import pluggy

from gateway import hookspecs
from gateway.channels import ADAPTER_METHODS, ChannelConfig, ChannelType
from gateway.errors import PluginError


def get_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Return a new manager; misspelt hooks and unknown hooks fail here (check_pending)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as exc:
            raise PluginError(_failed_plugin(exc)) from exc
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


_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _shipped_by(pm: pluggy.PluginManager) -> dict[int, str]:
    """The distribution (name and version) of each plugin object installed from a package."""
    return {
        id(plugin): f"{facade.project_name} {facade.version}"
        for plugin, facade in pm.list_plugin_distinfo()
    }


def _registered(impl: pluggy.HookImpl, who: str) -> list[ChannelType]:
    """What one plugin's `register_channel_types` returns, checked: a plugin's mistake must be
    reported naming the plugin, not surface later as a traceback from deep inside (ops audit:
    a hook that raised, a config model that was a dict, an adapter without `send`)."""
    try:
        batch = impl.function()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a SystemExit too: a plugin must not end every command
        raise PluginError(
            f"{who}: register_channel_types failed: {type(exc).__name__}: {exc};"
            " fix or uninstall it"
        ) from exc
    if not isinstance(batch, list | tuple) or not all(isinstance(t, ChannelType) for t in batch):
        raise PluginError(
            f"{who}: register_channel_types must return a list of"
            f" gateway.channels.ChannelType, not {type(batch).__name__}"
        )
    for channel_type in batch:
        if not isinstance(channel_type.name, str) or not _TYPE_NAME.fullmatch(channel_type.name):
            raise PluginError(
                f"{who}: a channel type's name must be a word of letters, digits and _ (what"
                f" config's `type:` says), not {channel_type.name!r}"
            )
        model = channel_type.config_model
        if not (isinstance(model, type) and issubclass(model, ChannelConfig)):
            raise PluginError(
                f"{who}: channel type {channel_type.name!r}: config_model must be a subclass"
                f" of gateway.channels.ChannelConfig, not {model!r}"
            )
        factory = channel_type.factory
        if not callable(factory):
            raise PluginError(
                f"{who}: channel type {channel_type.name!r}: factory must be callable"
            )
        if isinstance(factory, type):
            missing = [m for m in ADAPTER_METHODS if not callable(getattr(factory, m, None))]
            if missing:
                raise PluginError(
                    f"{who}: channel type {channel_type.name!r}: adapter class"
                    f" {factory.__name__} lacks {', '.join(missing)}"
                    " (see gateway.channels.ChannelAdapter, or subclass BaseAdapter)"
                )
    return list(batch)


def _registrations(pm: pluggy.PluginManager) -> list[tuple[ChannelType, str]]:
    """Every registered channel type, checked (`_registered`), with the distribution that
    ships it; a name registered twice is an error naming both plugins."""
    shipped = _shipped_by(pm)
    found: list[tuple[ChannelType, str]] = []
    owner: dict[str, str] = {}
    for impl in pm.hook.register_channel_types.get_hookimpls():
        shipped_by = shipped.get(id(impl.plugin), "")
        who = f"plugin {impl.plugin_name!r}" + (f" ({shipped_by})" if shipped_by else "")
        for channel_type in _registered(impl, who):
            if channel_type.name in owner:
                raise PluginError(
                    f"channel type {channel_type.name!r} is registered twice: by"
                    f" {owner[channel_type.name]} and by {who}; uninstall one of them"
                )
            owner[channel_type.name] = who
            found.append((channel_type, shipped_by))
    return found


def channel_types(pm: pluggy.PluginManager) -> dict[str, ChannelType]:
    """Collect every registered channel type by name (see `_registrations`)."""
    return {channel_type.name: channel_type for channel_type, _ in _registrations(pm)}


def config_models(types: dict[str, ChannelType]) -> dict[str, type[ChannelConfig]]:
    return {name: t.config_model for name, t in types.items()}


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """List channel types with the version of the distribution that ships them (a plugin's
    mistake is a PluginError naming it, as for every other command)."""
    infos = [
        PluginInfo(channel_type.name, channel_type.version, shipped_by, channel_type.description)
        for channel_type, shipped_by in _registrations(pm)
    ]
    return sorted(infos, key=lambda i: i.channel_type)


def installed_version() -> str:
    try:
        return metadata.version("channel-gateway")
    except metadata.PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"
