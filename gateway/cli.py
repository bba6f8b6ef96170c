"""The `gateway` command: serve, check, route, plugins, and commands plugins contribute.

Every failure a user can cause (a bad config, an unknown channel) ends with a clear message on
stderr and exit status 1, never a traceback; secrets never reach the output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pluggy

from gateway.channels import ChannelType, Command, CommandContext
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.pluginmanager import (
    channel_types,
    config_models,
    describe_plugins,
    get_plugin_manager,
    installed_version,
)
from gateway.routing import Router

DEFAULT_CONFIG = "config.yaml"


def _load(path: str) -> tuple[GatewayConfig, dict[str, ChannelType], pluggy.PluginManager]:
    pm = get_plugin_manager()
    types = channel_types(pm)
    if not Path(path).exists():
        raise ConfigError(f"{path}: no such file (pass --config PATH)")
    return load_config(path, config_models(types)), types, pm


def _cmd_check(args: argparse.Namespace) -> int:
    config, _, _ = _load(args.config)
    print(f"{args.config}: valid")
    print(config.describe())
    return 0


def _cmd_route(args: argparse.Namespace) -> int:
    config, _, _ = _load(args.config)
    try:
        channel = config.channel(args.channel)
    except KeyError:
        # The configuration is fine; the command line named a channel it does not have.
        known = ", ".join(c.name for c in config.channels) or "none"
        print(f"gateway route: no channel named {args.channel!r} (known: {known})", file=sys.stderr)
        return 2
    match = Router(config).route(channel.name, channel.type, args.text, args.sender)
    print(f"channel: {channel.name} ({channel.type})")
    print(f"rule:    {match.description}")
    print(f"queue:   {match.queue}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    print(f"channel-gateway {installed_version()}")
    for info in describe_plugins(pm):
        origin = f" ({info.distribution})" if info.distribution else ""
        print(f"{info.channel_type:<12} {info.version:<10} {info.description}{origin}")
    return 0


def _tune_gc() -> None:
    """Make the cyclic garbage collector run less often in the long-running server.

    Almost everything the gateway allocates is freed by reference counting; the collector's
    default of a young-generation pass every 700 allocations, each also scanning the objects
    kept in memory (the recent-events ring, caches), was a few per cent of the CPU per webhook.
    What was loaded at start-up (modules, config) is frozen out of collection entirely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def _cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.logs import configure

    configure(args.log_level)
    config, types, _ = _load(args.config)
    if args.host or args.port:
        server = config.server.model_copy(
            update={
                "host": args.host or config.server.host,
                "port": args.port or config.server.port,
            }
        )
        config = config.model_copy(update={"server": server})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = create_app(config, types)
    _tune_gc()
    host, port = config.server.host, config.server.port
    base = f"http://{host}:{port}"
    for channel in config.channels:
        if channel.type == "webchat":
            print(
                f"gateway: web chat demo for {channel.name!r}: {base}/webchat/{channel.name}/demo",
                flush=True,
            )
    print(f"gateway: agent inbox page: {base}/inbox", flush=True)
    print(f"gateway: serving on {base} (store: {config.store.backend})", flush=True)
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=30, access_log=None)
    return 0


async def _run_plugin_command(command: Command, args: argparse.Namespace) -> int:
    from gateway.logs import configure
    from gateway.runtime import Runtime

    configure("warning")
    config, types, _ = _load(args.config)
    runtime = Runtime(config, types)
    await runtime.store.open()
    try:
        context = CommandContext(
            config=config,
            store=runtime.store,
            inbound=runtime.ingestor,
            adapters=runtime.adapters,
            clock=runtime.clock,
        )
        return await command.run(args, context)
    finally:
        await runtime.store.close()


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Customer-service channel gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG),
            help="config file (default: $GATEWAY_CONFIG or config.yaml)",
        )
        return p

    serve = with_config(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_cmd_serve)

    check = with_config(sub.add_parser("check", help="validate a config and print what it sets up"))
    check.set_defaults(func=_cmd_check)

    route = with_config(sub.add_parser("route", help="dry-run the routing rules"))
    route.add_argument("--channel", required=True, help="channel instance name")
    route.add_argument("--text", default=None, help="message text")
    route.add_argument("--from", dest="sender", default=None, help="sender address")
    route.set_defaults(func=_cmd_route)

    plugins = sub.add_parser("plugins", help="list channel types found (built-in and third-party)")
    plugins.set_defaults(func=_cmd_plugins)

    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in commands:
        *group_words, leaf = command.words
        target = sub
        for word in group_words:
            if word not in groups:
                group = sub.add_parser(word, help=f"{word} commands")
                groups[word] = group.add_subparsers(dest=f"{word}_command", required=True)
            target = groups[word]
        p = with_config(target.add_parser(leaf, help=command.help))
        command.configure(p)
        p.set_defaults(func=lambda a, c=command: asyncio.run(_run_plugin_command(c, a)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        pm = get_plugin_manager()
        commands = [c for batch in pm.hook.register_commands() for c in batch]
    except Exception as exc:  # a broken plugin must not hide the built-in commands' help
        print(f"gateway: plugin error: {exc}", file=sys.stderr)
        return 1
    args = build_parser(commands).parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"gateway: invalid configuration:\n{exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
