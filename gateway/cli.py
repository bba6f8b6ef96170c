"""The `gateway` command: serve, check, route, plugins, and commands plugins contribute.

Every failure a user can cause (a bad config, an unknown channel) ends with a clear message on
stderr and exit status 1, never a traceback; secrets never reach the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pluggy
import structlog

from gateway.channels import ChannelType, Command, CommandContext
from gateway.config import GatewayConfig, load_config, override_server, without_userinfo
from gateway.errors import (
    ChannelStartError,
    ConfigError,
    PluginError,
    StoreUnavailable,
    is_credentials_refusal,
)
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
    for warning in config.warnings():
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
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
    sender = None if args.sender is None else channel.contact_address(args.sender)
    match = Router(config).route(channel.name, channel.type, args.text, sender)
    print(f"channel: {channel.name} ({channel.type})")
    if sender is not None and sender != args.sender:
        print(f"from:    {sender} (how the channel stores {args.sender!r})")
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


class StartupError(Exception):
    """`gateway serve` could not start for a reason of its environment (the store cannot be
    opened, the port cannot be bound): one line for the user, not a traceback."""


def _environment_errors() -> tuple[type[BaseException], ...]:
    """What a store or a socket raises when the machine, the network or a server is the problem
    (refused, unreachable, a wrong password, an unwritable path), as opposed to a bug."""
    from redis.exceptions import RedisError

    return (OSError, sqlite3.Error, RedisError, StoreUnavailable)


def _reason(exc: BaseException, secret: str | None) -> str:
    """The cause of a start-up failure in a few lowercase words: the OS's wording for an errno
    (`connection refused`, `address already in use`, `permission denied: /path`) wherever it
    is in the chain of causes, else the exception's own message; `secret` never appears."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, FileExistsError):  # creating a directory where a file is
            text = f"not a directory: {cause.filename}"
            break
        if isinstance(cause, OSError) and cause.errno:
            text = os.strerror(cause.errno).lower()
            if cause.filename is not None:
                text += f": {cause.filename}"
            break
        if is_credentials_refusal(cause):  # redis: WRONGPASS, NOAUTH
            text = f"authentication failed ({_message(cause)})"
            break
        cause = cause.__cause__ or cause.__context__
    else:
        text = _message(exc)
    if secret:
        text = text.replace(secret, "***")
    return text


def _message(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).strip().rstrip(".")


class _Startup:
    """Where `gateway serve` is in its start-up, so a failure can say what failed.

    The phases: opening the store (the app's first cleanup context, see gateway/app.py), then
    starting the rest, then binding the listening socket; `serving` once the socket is open.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.phase = "store"

    async def store_opened(self, app: object) -> AsyncIterator[None]:
        self.phase = "start"
        yield

    async def started(self, app: object) -> None:
        self.phase = "listen"

    def serving(self, _banner: str) -> None:
        """aiohttp's `print`: called once every socket listens; only now do we say so."""
        self.phase = "serving"
        config = self.config
        base = f"http://{config.server.host}:{config.server.port}"
        for channel in config.channels:
            if channel.type == "webchat":
                print(
                    f"gateway: web chat demo for {channel.name!r}: "
                    f"{base}/webchat/{channel.name}/demo",
                    flush=True,
                )
        print(f"gateway: agent inbox page: {base}/inbox", flush=True)
        print(f"gateway: serving on {base} (store: {config.store.backend})", flush=True)
        structlog.get_logger("gateway.server").info("server.serving", url=base)

    def failure(self, exc: BaseException) -> StartupError | None:
        """The one-line error for `exc` raised in the current phase, or None when `exc` is not
        an environment problem of that phase (a bug: let its traceback show)."""
        if isinstance(exc, ChannelStartError):
            return StartupError(str(exc))
        if not isinstance(exc, _environment_errors()):
            return None
        if self.phase == "store":
            store = self.config.store.url
            reason = _reason(exc, urlsplit(store).password)
            return StartupError(f"cannot open the store {without_userinfo(store)}: {reason}")
        if self.phase == "listen" and isinstance(exc, OSError):
            server = self.config.server
            return StartupError(
                f"cannot listen on {server.host}:{server.port}: {_reason(exc, None)}"
            )
        return None


def _cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.appkeys import RUNTIME
    from gateway.logs import configure
    from gateway.watch import raise_fd_limit

    configure(args.log_level)
    config, types, _ = _load(args.config)
    given = {"host": ("--host", args.host), "port": ("--port", args.port)}
    overrides = {field: option for field, option in given.items() if option[1] is not None}
    if overrides:
        config = override_server(config, overrides)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        app = create_app(config, types)
    except ChannelStartError as exc:  # a plugin that cannot make its adapter: one line
        raise StartupError(str(exc)) from exc
    startup = _Startup(config)
    # gateway/app.py opens the store in its first cleanup context; what follows it is the rest.
    app.cleanup_ctx.insert(1, startup.store_opened)
    app.on_startup.append(startup.started)  # after every cleanup context has started
    _tune_gc()
    host, port = config.server.host, config.server.port
    log = structlog.get_logger("gateway.server")
    fds = raise_fd_limit()
    log.info(
        "server.starting",
        host=host,
        port=port,
        node=app[RUNTIME].node,
        store=config.store.backend,
        file_descriptors=fds,
    )
    for warning in config.warnings():
        log.warning("config.warning", problem=warning)
    app.on_shutdown.append(_log_stopping)
    app.on_startup.append(_stop_on_hangup)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            print=startup.serving,
            shutdown_timeout=30,
            access_log=None,
        )
    except Exception as exc:
        failure = startup.failure(exc)
        if failure is None:
            raise
        raise failure from exc
    log.info("server.stopped")
    return 0


async def _stop_on_hangup(_app: object) -> None:
    """SIGHUP (the terminal that started it closed, or `kill -HUP` out of habit, meaning
    "reload" elsewhere) stops the gateway the way SIGTERM does: the config is read at start
    only, and dying on the signal's default action dropped sockets and work mid-way (ops
    audit: exit 129, no `server.stopping`)."""
    from aiohttp.web import GracefulExit

    loop = asyncio.get_running_loop()

    def hang_up() -> None:
        structlog.get_logger("gateway.server").info("server.hangup", action="stop")
        raise GracefulExit()

    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
        loop.add_signal_handler(signal.SIGHUP, hang_up)


async def _log_stopping(_app: object) -> None:
    """First thing on SIGTERM or SIGINT: the log says a stop was asked for, then what it did."""
    structlog.get_logger("gateway.server").info("server.stopping")


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
    # Read as text: the config's own validation judges it (gateway.config.override_server),
    # so `--port 70000` is refused in the same words as `server.port: 70000`.
    serve.add_argument("--port", help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_cmd_serve)

    check = with_config(sub.add_parser("check", help="validate a config and print what it sets up"))
    check.set_defaults(func=_cmd_check)

    route = with_config(sub.add_parser("route", help="dry-run the routing rules"))
    route.add_argument("--channel", required=True, help="channel instance name")
    route.add_argument("--text", default=None, help="message text")
    route.add_argument(
        "--from",
        dest="sender",
        default=None,
        help="the contact's address, which rules' `from` match; taken to the form the channel"
        " stores it in (whatsapp:+5511999990000 and 5511999990000 are +5511999990000 on"
        " WhatsApp; Ana <ana@example.com> is ana@example.com), shown when it differs",
    )
    route.set_defaults(func=_cmd_route)

    plugins = sub.add_parser("plugins", help="list channel types found (built-in and third-party)")
    with_config(plugins)  # taken, as by every command, though the list does not read it
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
        sys.stdout.flush()  # a reader gone before the end shows here, not at exit
    except PluginError as exc:
        print(f"gateway: plugin error: {exc.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"gateway: invalid configuration:\n{exc.message}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gateway check | head`: the reader has what it wanted. Python would print a
        # traceback, and another on exit when it flushes stdout again: point stdout nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
