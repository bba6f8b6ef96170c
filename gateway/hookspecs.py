"""The gateway's plugin hooks (pluggy project name `gateway`).

Hooks are synchronous and only register things; all async work lives on adapter objects
(`gateway.channels.ChannelAdapter`). pluggy cannot await an `async def` hook, so none exists.

A plugin is a module (or object) named by an entry point in the `gateway` group:

    [project.entry-points.gateway]
    mychannel = "my_package.gateway_plugin"

and implements hooks with `gateway.hookspecs.hookimpl` (or `pluggy.HookimplMarker("gateway")`,
so a plugin need not import the gateway to declare them).
"""

from __future__ import annotations

import pluggy

from gateway.channels import ChannelType, Command

PROJECT = "gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_channel_types() -> list[ChannelType]:  # type: ignore[empty-body]
    """Return the channel types this plugin provides.

    Each `ChannelType` carries the `type:` name ops write in config.yaml, the pydantic model
    (a `gateway.channels.ChannelConfig` subclass) that validates one instance's section, and
    the factory that builds the adapter for one configured instance. Two plugins registering
    the same type name is a start-up error.
    """


@hookspec
def register_commands() -> list[Command]:  # type: ignore[empty-body]
    """Return extra `gateway` sub-commands a plugin provides (e.g. `gateway email backfill`).

    Each `Command` names its words (`("email", "backfill")`), adds its arguments to an
    argparse parser, and runs with a `CommandContext` holding the validated config, the
    opened store, the ingest path and the channel adapters (not started).
    """
