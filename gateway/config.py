"""config.yaml: the models ops write against, and the loader that refuses a bad file up front.

The loader exists so that every mistake in config.yaml is found at startup (or by
`gateway check`), all at once, each named by file and key path, instead of surfacing one by one
at run time. It works in five steps:

1. parse the YAML (syntax errors and duplicate keys are reported with their line), and refuse
   a document whose aliases expand it past `MAX_VALUES`;
2. expand `${VAR}` references from the environment inside every string value;
3. validate each core section (`server`, `store`, ...) with its pydantic model;
4. validate each `channels[i]` entry with the model its `type` registered, so core code never
   knows a channel's fields;
5. cross-check names: duplicates, routes and agents naming unknown queues, unreachable rules.

Problems from all steps are gathered into one `ConfigError`, one `FILE: KEY.PATH: expectation`
line each. Values are never echoed: after expansion any value may be a secret, so messages carry
only key paths and names that ops wrote (queue, channel, type names).

Decisions where the contract leaves room:

- `${VAR}` may stand unquoted anywhere, including inside a YAML flow mapping (`{a: ${X}}`, as in
  DESIGN section 3) where plain YAML would read `{` as a nested mapping. `$${` is a literal
  `${` (so `$${VAR}` is the text `${VAR}`); any other `${` that is not a whole `${NAME}` is
  refused, and a `$` not followed by `{` is itself. Variables are expanded in values, never in
  keys.
- A top-level section written as an empty key (`agents:` with nothing under it) counts as absent.
- An empty file (nothing, whitespace or comments) and a file without a queue are refused: every
  conversation is routed to a queue, so either can only be a mistake.
- With queues but no routing rules (or no rule matching), a conversation goes to the first queue:
  a one-queue setup then needs no routing section at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import regex
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from gateway.channels import ChannelConfig, refuse_boolean_number
from gateway.durations import (
    Duration,
    PositiveDuration,
    TimerDuration,
    format_duration,
    retry_span,
)
from gateway.errors import ConfigError
from gateway.store.redis_url import check_url

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Queue names and agent ids travel in URLs and logs, so they stay URL-safe."""


class _Section(BaseModel):
    """Base of every core model: typos are refused and a loaded config cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def refuse_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_boolean_number(cls, value, info)


class ServerConfig(_Section):
    """Where the HTTP server listens; `public_url` is the address providers sign webhooks for."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=1, le=65535)
    """Not 0: the system's pick of a port would be told to nobody (providers, agents, the
    `serving on` line all need the real one)."""
    public_url: str = Field(default="http://127.0.0.1:8080", pattern=r"^https?://[^\s/]+")
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    """Load balancers whose `X-Forwarded-For` names the client (CIDR ranges, e.g.
    `10.0.0.0/8`); empty: the TCP peer is the client (see gateway.clientaddr)."""


def _check_store_url(url: str) -> str:
    """Accept only the stores the gateway ships; a typo would otherwise fail much later."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep and rest.startswith("/") and len(rest) > 1:
        return url
    if scheme in ("redis", "rediss") and sep and rest:
        check_url(url)
        return url
    raise ValueError(
        "expected sqlite:///relative/path, sqlite:////absolute/path, redis://... or rediss://..."
    )


class StoreConfig(_Section):
    """The durable store: an embedded SQLite file, or a Redis shared by several processes."""

    url: typing.Annotated[str, AfterValidator(_check_store_url)] = "sqlite:///var/gateway.db"
    synchronous: Literal["full", "normal"] = "full"
    event_retention: PositiveDuration | None = None
    """How long the event log (`/api/v1/events`, stream replays) keeps an event; null, the
    default, keeps every one. Conversations and messages are never deleted. At least an hour:
    shorter would take events from readers that are merely a little behind (a typo of `1s`
    for `1d` would empty the log every ten minutes)."""
    startup_wait: Duration = timedelta(seconds=30)
    """How long `gateway serve` keeps trying to reach a store that is down or still loading
    (Redis started after the gateway, or replaying a large AOF) before it gives up with the
    reason; 0s gives up at once. Refused credentials are never waited for."""

    @field_validator("event_retention")
    @classmethod
    def _retention_of_an_hour_or_more(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(hours=1):
            raise ValueError("must be at least 1h (or null: keep every event)")
        return value

    @property
    def backend(self) -> Literal["sqlite", "redis"]:
        return "sqlite" if self.url.startswith("sqlite:") else "redis"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file (`sqlite:///a/b` is relative, `sqlite:////a/b` absolute)."""
        if self.backend != "sqlite":
            return None
        return Path(self.url.removeprefix("sqlite:///"))


class PresenceConfig(_Section):
    """How long an agent may be disconnected before their active conversations go pending."""

    agent_disconnect_grace: Duration = timedelta(seconds=30)


class OutboundConfig(_Section):
    """How an agent message is retried when its provider fails transiently (429, 5xx, time-outs,
    an SMTP 4xx), before it ends `failed` with the reason. Waits grow exponentially from
    `retry_initial` up to `retry_max_delay`, randomized ("full jitter"). The defaults give up
    after seconds; behind an SMTP relay that greylists or restarts, allow minutes."""

    retry_attempts: int = Field(default=5, ge=1, le=50)
    retry_initial: Duration = timedelta(milliseconds=500)
    retry_max_delay: PositiveDuration = timedelta(seconds=30)
    send_timeout: PositiveDuration = timedelta(seconds=60)
    """The most one try of a send may take: a channel that never answers (a plugin whose
    client has no timeout) is a transient failure, retried, not a delivery hung for ever."""

    @model_validator(mode="after")
    def _initial_below_max(self) -> Self:
        if self.retry_initial <= timedelta(0) or self.retry_initial > self.retry_max_delay:
            raise ValueError("retry_initial must be above 0 and at most retry_max_delay")
        return self

    def longest(self) -> timedelta:
        """The longest a delivery can spend retrying: every wait at its cap, and every try
        cut off by `send_timeout`."""
        return retry_span(
            self.retry_attempts, self.retry_initial, self.retry_max_delay, self.send_timeout
        )


class QueueConfig(_Section):
    """A queue conversations wait in; `automatic` assigns them to agents with `strategy`."""

    name: str = Field(pattern=_NAME_PATTERN)
    distribution: Literal["manual", "automatic"] = "manual"
    strategy: Literal["least_busy", "round_robin"] = "least_busy"
    requeue_after: TimerDuration | None = None

    @field_validator("strategy")
    @classmethod
    def _strategy_of_an_automatic_queue(cls, value: str, info: ValidationInfo) -> str:
        """A strategy on a manual queue is never used: whoever wrote it expects automatic
        assignment (most likely `distribution: automatic` was forgotten), and would wait for
        it. Only a strategy written in the file is checked (not the default); a
        `distribution` that is itself invalid is reported on its own."""
        if info.data.get("distribution") == "manual":
            raise ValueError(
                "a strategy only applies to distribution: automatic; this queue is manual"
                " (agents accept its conversations themselves): remove strategy, or set"
                " distribution: automatic"
            )
        return value


def _check_regex(pattern: str) -> str:
    """Compile at load time so a broken rule is a config error, not a crash on first message
    (with `regex`, what routing matches with: see `gateway.routing`)."""
    try:
        regex.compile(pattern)
    except regex.error as exc:
        # `regex.error` has `msg` and `pos` as `re.error` does (its stubs leave them out).
        position: int | None = getattr(exc, "pos", None)
        where = f" at position {position}" if position is not None else ""
        message = getattr(exc, "msg", str(exc))
        raise ValueError(f"not a valid regular expression: {message}{where}") from None
    return pattern


class RouteCondition(_Section):
    """What a conversation's first message must look like for a rule to apply (all must hold).

    `text` is a regular expression searched anywhere in the first 4,096 characters of the
    message text (write `(?i)` for case-insensitive, `^...$` to anchor), by the `regex` module,
    which takes Python's `re` syntax and can time a search out (see `gateway.routing`).
    `from` is a case-insensitive shell glob on the
    contact's address, e.g. `+55*` or `*@bigcorp.com`.
    """

    channel: str | None = None
    type: str | None = None
    text: typing.Annotated[str, AfterValidator(_check_regex)] | None = None
    from_: str | None = Field(default=None, validation_alias="from", serialization_alias="from")

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        """An empty `if` would silently match everything; a default rule simply omits `if`."""
        if self.channel is None and self.type is None and self.text is None and self.from_ is None:
            raise ValueError(
                "an empty 'if' matches everything: give channel, type, text or from, "
                "or drop 'if' to make a default rule"
            )
        return self

    def describe(self) -> str:
        """Render the condition as readable text for `gateway check` and route explanations."""
        parts = []
        if self.channel is not None:
            parts.append(f"channel is '{self.channel}'")
        if self.type is not None:
            parts.append(f"type is '{self.type}'")
        if self.text is not None:
            parts.append(f"text matches /{self.text}/")
        if self.from_ is not None:
            parts.append(f"from matches '{self.from_}'")
        return " and ".join(parts)


class RouteConfig(_Section):
    """One routing rule: conversations matching `if` (or all, without `if`) go to `queue`."""

    if_: RouteCondition | None = Field(
        default=None, validation_alias="if", serialization_alias="if"
    )
    queue: str

    def describe(self) -> str:
        condition = self.if_.describe() if self.if_ is not None else "always"
        return f"{condition} -> {self.queue}"


class AgentConfig(_Section):
    """An agent: authenticates with a bearer token whose SHA-256 (never the token) is stored."""

    id: str = Field(pattern=_NAME_PATTERN)
    name: str | None = None
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    queues: list[str] = Field(min_length=1)
    max_active: int = Field(default=5, ge=1)


class IntegratorConfig(_Section):
    """A system that reads the whole event log (`GET /api/v1/events`) and nothing else.

    Agents read the log too, but only the events of conversations they may see (their queues,
    or assigned to them); an integrator (a CRM sync, a data warehouse) sees every event. Like
    an agent it presents a bearer token whose SHA-256 is stored here.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class GatewayConfig(_Section):
    """The whole config.yaml, validated and cross-checked; build it with `load_config`.

    Constructing it directly (tests, tools) runs the same cross-checks, so any instance is
    internally consistent: every route and agent names an existing queue.
    """

    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    presence: PresenceConfig = Field(default_factory=PresenceConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    channels: list[ChannelConfig] = Field(default_factory=list)
    queues: list[QueueConfig] = Field(default_factory=list)
    routing: list[RouteConfig] = Field(default_factory=list)
    agents: list[AgentConfig] = Field(default_factory=list)
    integrators: list[IntegratorConfig] = Field(default_factory=list)

    _channels_by_name: dict[str, ChannelConfig] = PrivateAttr(default_factory=dict)
    _queues_by_name: dict[str, QueueConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        problems = _reference_problems(
            [c.name for c in self.channels],
            [q.name for q in self.queues],
            [_RouteRefs.of(rule) for rule in self.routing],
            [_AgentRefs.of(agent) for agent in self.agents],
            self.agents,
            self.integrators,
        )
        problems += _shared_channel_values(self.channels)
        if problems:
            raise ValueError("; ".join(p.render() for p in problems))
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Index channels and queues by name: webhooks look their channel up on every call."""
        self._channels_by_name = {c.name: c for c in self.channels}
        self._queues_by_name = {q.name: q for q in self.queues}

    def channel(self, name: str) -> ChannelConfig:
        """Return the channel instance called `name`; KeyError if there is none."""
        try:
            return self._channels_by_name[name]
        except KeyError:
            raise KeyError(f"no channel named {name!r}") from None

    def queue(self, name: str) -> QueueConfig:
        """Return the queue called `name`; KeyError if there is none."""
        try:
            return self._queues_by_name[name]
        except KeyError:
            raise KeyError(f"no queue named {name!r}") from None

    def agent_by_token(self, raw_token: str) -> AgentConfig | None:
        """Authenticate a bearer token: compare its SHA-256 in constant time with every agent's."""
        digest = hashlib.sha256(raw_token.encode()).hexdigest()
        found = None
        for agent in self.agents:
            if hmac.compare_digest(digest, agent.token_sha256):
                found = agent
        return found

    def agents_on_queue(self, queue: str) -> list[AgentConfig]:
        """Return the agents allowed on `queue`, in config order (the order strategies use)."""
        return [agent for agent in self.agents if queue in agent.queues]

    def describe(self) -> str:
        """Summarize the config for `gateway check`; prints names and rules, never a secret."""
        return "\n".join(_describe_lines(self))

    def warnings(self) -> list[str]:
        """What is valid but almost surely a mistake: `gateway check` prints it, `serve` logs
        it. A queue no agent is on keeps whatever is routed or transferred to it waiting:
        until the web chat's `no_agent_timeout`, and for good on WhatsApp and email."""
        served = {queue for agent in self.agents for queue in agent.queues}
        return [
            f"queues: {queue.name!r} has no agent: nobody can take what waits there"
            for queue in self.queues
            if queue.name not in served
        ]


def override_server(
    config: GatewayConfig, overrides: Mapping[str, tuple[str, object]]
) -> GatewayConfig:
    """Return `config` with `server` fields replaced from the command line (`serve --port`).

    `overrides` maps a field to where it was given and its value: `{"port": ("--port",
    "70000")}`. The section is validated again with them, exactly as the file's is, so a value
    the file may not hold is refused the same way ("--port: server.port: ..."), not served
    with or ignored.
    """
    values = {**config.server.model_dump(), **{k: v for k, (_, v) in overrides.items()}}
    try:
        server = ServerConfig.model_validate(values)
    except ValidationError as error:
        redact = _Redactor(set())
        lines = []
        for details in error.errors():
            field = details["loc"][0] if details["loc"] else None
            given = overrides[field][0] if isinstance(field, str) and field in overrides else None
            problem = _problem_from(details, ServerConfig, ("server",), redact)
            lines.append(problem.render(given))
        raise ConfigError("\n".join(lines)) from None
    return config.model_copy(update={"server": server})


def _describe_lines(config: GatewayConfig) -> Iterator[str]:
    server, store = config.server, config.store
    yield f"server: {server.host}:{server.port} (public URL {without_userinfo(server.public_url)})"
    durability = f" (synchronous {store.synchronous})" if store.backend == "sqlite" else ""
    kept = store.event_retention
    retention = "kept for good" if kept is None else f"kept {format_duration(kept)}"
    wait = format_duration(store.startup_wait)
    yield (
        f"store: {without_userinfo(store.url)}{durability}, events {retention},"
        f" waited for up to {wait} at start-up"
    )
    grace = format_duration(config.presence.agent_disconnect_grace)
    yield f"presence: agent_disconnect_grace {grace}"
    out = config.outbound
    yield (
        f"outbound: {out.retry_attempts} attempts, waits from"
        f" {format_duration(out.retry_initial)} up to {format_duration(out.retry_max_delay)},"
        f" each try cut off after {format_duration(out.send_timeout)}"
        f" (at most {format_duration(out.longest())} per message)"
    )
    yield f"channels ({len(config.channels)}):"
    for channel in config.channels:
        yield f"  {channel.name}: type {channel.type}{_describe_policy(channel)}"
    yield f"queues ({len(config.queues)}):"
    for queue in config.queues:
        yield f"  {queue.name}: {_describe_queue(queue)}"
    yield f"routing ({len(config.routing)} rules, first match wins):"
    for index, rule in enumerate(config.routing):
        yield f"  routing[{index}]: {rule.describe()}"
    if config.queues and (not config.routing or config.routing[-1].if_ is not None):
        yield f"  otherwise -> {config.queues[0].name}"
    yield f"agents ({len(config.agents)}):"
    for agent in config.agents:
        name = f" ({agent.name})" if agent.name else ""
        queues = ", ".join(agent.queues)
        yield f"  {agent.id}{name}: queues {queues}; max_active {agent.max_active}"
    if config.integrators:
        names = ", ".join(i.name for i in config.integrators)
        yield f"integrators ({len(config.integrators)}): {names} (read every event)"


def _describe_policy(channel: ChannelConfig) -> str:
    parts = []
    if channel.reply_window is not None:
        parts.append(f"reply_window {format_duration(channel.reply_window)}")
    if channel.no_agent_timeout is not None:
        parts.append(f"no_agent_timeout {format_duration(channel.no_agent_timeout)}")
    return "".join(f", {part}" for part in parts)


def _describe_queue(queue: QueueConfig) -> str:
    text: str = queue.distribution
    if queue.distribution == "automatic":
        text += f", {queue.strategy}"
    if queue.requeue_after is not None:
        text += f", requeue_after {format_duration(queue.requeue_after)}"
    return text


def without_userinfo(url: str) -> str:
    """Drop `user:password@` from a URL: a Redis URL commonly carries its password there."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


# --------------------------------------------------------------------------------------------
# Problems and cross-checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    """One thing wrong with the file: where (`a.b[0].c`) and what was expected there."""

    path: str
    message: str

    def render(self, source: str | None = None) -> str:
        head = [part for part in (source, self.path) if part]
        return ": ".join([*head, self.message])


def _path(*parts: str | int) -> str:
    """Render a key path the way ops read it: `routing[0].if.text`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _known(names: Sequence[str]) -> str:
    return ", ".join(sorted(set(names))) or "none defined"


@dataclass(frozen=True, slots=True)
class _RouteRefs:
    """What a routing rule names in other sections, read from a valid rule or from the file's
    entry as it stands (a rule with a bad regex can still name an unknown queue)."""

    queue: str | None
    channel: str | None
    type: str | None
    conditional: bool

    @classmethod
    def of(cls, rule: RouteConfig) -> _RouteRefs:
        condition = rule.if_
        return cls(
            rule.queue,
            condition.channel if condition is not None else None,
            condition.type if condition is not None else None,
            condition is not None,
        )

    @classmethod
    def read(cls, entry: Any) -> _RouteRefs | None:
        if not isinstance(entry, dict):
            return None
        condition = entry.get("if")
        named = condition if isinstance(condition, dict) else {}
        return cls(
            _text_or_none(entry.get("queue")),
            _text_or_none(named.get("channel")),
            _text_or_none(named.get("type")),
            condition is not None,
        )


@dataclass(frozen=True, slots=True)
class _AgentRefs:
    """An agent's id and queues, read from a valid agent or from the file's entry as it
    stands (an agent with a bad token hash can still name an unknown queue)."""

    id: str | None
    queues: tuple[str | None, ...]

    @classmethod
    def of(cls, agent: AgentConfig) -> _AgentRefs:
        return cls(agent.id, tuple(agent.queues))

    @classmethod
    def read(cls, entry: Any) -> _AgentRefs | None:
        if not isinstance(entry, dict):
            return None
        queues = entry.get("queues")
        listed = tuple(_text_or_none(q) for q in queues) if isinstance(queues, list) else ()
        return cls(_text_or_none(entry.get("id")), listed)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _read_entries(entries: Any, read: Callable[[Any], _T | None]) -> list[_T | None] | None:
    """Each entry of a section as `read` sees it (None: the section is not a list)."""
    if not isinstance(entries, list):
        return None
    return [read(entry) for entry in entries]


def _reference_problems(
    channel_names: Sequence[str | None] | None,
    queue_names: Sequence[str | None] | None,
    routing: Sequence[_RouteRefs | None] | None,
    agent_refs: Sequence[_AgentRefs | None] | None,
    agents: Sequence[AgentConfig | None] | None,
    integrators: Sequence[IntegratorConfig | None] | None = None,
    *,
    require_queue: bool = False,
) -> list[_Problem]:
    """Check names across sections.

    A None section (not a list) is skipped; a None entry is one that is not even a mapping,
    reported already. Names and references are read even from invalid entries, so a queue
    with a bad `strategy` is not also reported as unknown by every route naming it, and a
    rule or an agent with a bad field still has its unknown queue reported in the same run
    (not only once the first mistake is fixed). Tokens are compared on valid entries only.

    `require_queue` (the loader's): a config file must have a queue, channels or not, since
    every conversation is routed to one and a gateway without one would fail on its first
    message; a model built directly (tests, tools) may do without, unless it has channels.
    """
    problems: list[_Problem] = []
    if channel_names is not None:
        problems += _duplicates("channels", "name", "channel name", channel_names)
    if queue_names is not None:
        problems += _duplicates("queues", "name", "queue name", queue_names)
        if require_queue and not queue_names:
            message = "at least one queue is required: every conversation is routed to one"
            problems.append(_Problem("queues", message))
        elif channel_names and not queue_names:
            problems.append(_Problem("queues", "at least one queue is required for channels"))
    if routing is not None:
        problems += _route_problems(routing, queue_names, channel_names)
    if agent_refs is not None:
        problems += _agent_problems(agent_refs, queue_names)
    if integrators is not None:
        names = [i.name if i is not None else None for i in integrators]
        problems += _duplicates("integrators", "name", "integrator name", names)
    problems += _shared_tokens(
        [("agents", a) for a in agents or ()] + [("integrators", i) for i in integrators or ()]
    )
    return problems


def _agent_problems(
    agents: Sequence[_AgentRefs | None], queue_names: Sequence[str | None] | None
) -> list[_Problem]:
    ids = [agent.id if agent is not None else None for agent in agents]
    problems = _duplicates("agents", "id", "agent id", ids)
    problems += _repeated_queues(agents)
    if queue_names is not None:
        problems += _agent_queue_problems(agents, [n for n in queue_names if n is not None])
    return problems


def _repeated_queues(agents: Sequence[_AgentRefs | None]) -> list[_Problem]:
    """A queue listed twice for one agent changes nothing the gateway does, so it is a slip:
    most likely another queue was meant (a copy-paste left unedited), which the agent then
    silently lacks."""
    problems = []
    for index, agent in enumerate(agents):
        first_seen: dict[str, int] = {}
        for position, queue in enumerate(agent.queues if agent is not None else ()):
            if queue is None:
                continue
            seen = first_seen.setdefault(queue, position)
            if seen != position:
                where = _path("agents", index, "queues", seen)
                message = f"queue '{queue}' is listed twice (see {where})"
                problems.append(_Problem(_path("agents", index, "queues", position), message))
    return problems


def _shared_channel_values(channels: Sequence[ChannelConfig | None]) -> list[_Problem]:
    """Settings two channels of one type must not share (`ChannelConfig.unique_values`)."""
    first_seen: dict[tuple[str, str, str], int] = {}
    problems = []
    for index, channel in enumerate(channels):
        if channel is None:
            continue
        for key, value in channel.unique_values().items():
            seen = first_seen.setdefault((channel.type, key, value), index)
            if seen != index:
                where = _path("channels", seen)
                problems.append(
                    _Problem(
                        _path("channels", index, key),
                        f"'{value}' is already the {key} of {where}: one {key}, one channel",
                    )
                )
    return problems


def _duplicates(section: str, key: str, what: str, names: Sequence[str | None]) -> list[_Problem]:
    first_seen: dict[str, int] = {}
    problems = []
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first_seen:
            where = _path(section, first_seen[name])
            problems.append(
                _Problem(_path(section, index, key), f"duplicate {what} '{name}' (see {where})")
            )
        else:
            first_seen[name] = index
    return problems


def _shared_tokens(
    holders: Sequence[tuple[str, AgentConfig | IntegratorConfig | None]],
) -> list[_Problem]:
    """Two token holders (agents, integrators) with one token could not be told apart; say
    so without showing the hash."""
    first_seen: dict[str, str] = {}
    problems = []
    index_in: dict[str, int] = {}
    for section, holder in holders:
        index = index_in[section] = index_in.get(section, -1) + 1
        if holder is None:
            continue
        here = _path(section, index)
        other = first_seen.setdefault(holder.token_sha256, here)
        if other != here:
            message = f"same token as {other}; each agent and integrator needs its own token"
            problems.append(_Problem(_path(section, index, "token_sha256"), message))
    return problems


def _route_problems(
    routing: Sequence[_RouteRefs | None],
    queue_names: Sequence[str | None] | None,
    channel_names: Sequence[str | None] | None,
) -> list[_Problem]:
    problems = []
    for index, rule in enumerate(routing):
        if rule is None:
            continue
        if queue_names is not None and rule.queue is not None:
            problems += _unknown("queue", rule.queue, queue_names, _path("routing", index, "queue"))
        if rule.channel is not None and channel_names is not None:
            where = _path("routing", index, "if", "channel")
            problems += _unknown("channel", rule.channel, channel_names, where)
        if not rule.conditional and index < len(routing) - 1:
            message = (
                "a rule without 'if' matches everything, so the rules after it can never "
                "match; make it the last rule"
            )
            problems.append(_Problem(_path("routing", index), message))
    return problems


def _unknown(what: str, name: str, known: Sequence[str | None], path: str) -> list[_Problem]:
    names = [n for n in known if n is not None]
    if name in names:
        return []
    return [_Problem(path, f"unknown {what} '{name}' (known: {_known(names)})")]


def _agent_queue_problems(
    agents: Sequence[_AgentRefs | None], queue_names: Sequence[str]
) -> list[_Problem]:
    problems = []
    for index, agent in enumerate(agents):
        for position, queue in enumerate(agent.queues if agent is not None else ()):
            if queue is None:  # not a name: its own problem, reported already
                continue
            problems += _unknown(
                "queue", queue, queue_names, _path("agents", index, "queues", position)
            )
    return problems


def _route_type_problems(
    routing: Sequence[_RouteRefs | None], channel_types: Mapping[str, type[ChannelConfig]]
) -> list[_Problem]:
    """A route on a type no plugin provides is a typo; only the loader knows the plugins."""
    problems = []
    for index, rule in enumerate(routing):
        if rule is not None and rule.type is not None:
            where = _path("routing", index, "if", "type")
            problems += _unknown("channel type", rule.type, list(channel_types), where)
    return problems


# --------------------------------------------------------------------------------------------
# Turning pydantic errors into problems without echoing values
# --------------------------------------------------------------------------------------------


class _Redactor:
    """Removes values that may be secret from a message before it is shown to anyone.

    Pydantic's own messages never contain the input, but a custom validator's may (the
    duration parser says `got '...'`); and any value may have come from the environment.
    """

    _MIN_VALUE = 4  # a shorter value would blank out ordinary words and indexes
    _MIN_SECRET = 6  # secrets (tokens, passwords) are longer; shorter env values are settings

    def __init__(self, expanded: set[str]) -> None:
        self._expanded = sorted(
            (v for v in expanded if len(v) >= self._MIN_SECRET), key=len, reverse=True
        )

    def __call__(self, message: str, value: Any = None) -> str:
        if isinstance(value, str) and value:
            message = message.replace(repr(value), "<value hidden>")
            if len(value) >= self._MIN_VALUE:
                message = self._hide(message, value)
        for secret in self._expanded:
            message = self._hide(message, secret)
        return message

    @staticmethod
    def _hide(message: str, value: str) -> str:
        """Hide `value` where it stands as a word of its own: a wrong `least` must not turn
        the expected `'least_busy'` into `'<value hidden>_busy'`."""
        pattern = rf"(?<![\w]){re.escape(value)}(?![\w])"
        return re.sub(pattern, "<value hidden>", message)


def _pydantic_problems(
    error: ValidationError, root: Any, prefix: tuple[str | int, ...], redact: _Redactor
) -> list[_Problem]:
    """Translate pydantic's error list (loc, type, msg; never input) into problems."""
    return [_problem_from(details, root, prefix, redact) for details in error.errors()]


def _problem_from(
    details: ErrorDetails, root: Any, prefix: tuple[str | int, ...], redact: _Redactor
) -> _Problem:
    loc = tuple(details["loc"])
    path = _path(*prefix, *loc)
    if details["type"] == "missing":
        return _Problem(path, "field required")
    if details["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return _Problem(path, f"unknown key{hint}")
    message = details["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return _Problem(path, redact(message, details.get("input")))


def _allowed_keys(root: Any, loc: Sequence[str | int]) -> list[str]:
    """Find the keys of the model at `loc`, to suggest them next to an unknown key."""
    current = root
    for part in loc:
        current = _strip_optional(current)
        if isinstance(part, int) and typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        elif isinstance(part, str) and _is_model(current):
            fields = {_key_of(name, f): f for name, f in current.model_fields.items()}
            if part not in fields:
                return []
            current = fields[part].annotation
        else:
            return []
    current = _strip_optional(current)
    if not _is_model(current):
        return []
    return [_key_of(name, f) for name, f in current.model_fields.items()]


def _is_model(value: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _key_of(name: str, field: Any) -> str:
    alias = field.validation_alias
    return alias if isinstance(alias, str) else name


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in typing.get_args(annotation):
        return args[0]
    return annotation


# --------------------------------------------------------------------------------------------
# YAML and ${VAR}
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep only the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key if isinstance(key, str | int | float | bool) else id(key_node))
        return super().construct_mapping(node, deep=deep)


_VAR_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""`$${` (a literal `${`, so `$${VAR}` is the text `${VAR}`), or a reference `${NAME}`."""

MALFORMED_REFERENCE = (
    "an environment reference must be ${NAME} (letters, digits and _, not starting with a"
    " digit), closed by }; write $${ for a literal ${"
)


class _Variables:
    """Expands `${VAR}` in string values, recording what is missing and what was expanded.

    References are swapped for an opaque random marker before YAML parsing, so that
    `{token: ${X}}` stays a plain scalar inside a flow mapping, then expanded after parsing,
    when the key path of each value is known (a missing variable is reported with its path).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        nonce = secrets.token_hex(8)
        self._open, self._close = f"_gwvar{nonce}_", f"_{nonce}_gwvar"
        self._marker = re.compile(
            re.escape(self._open) + r"([EL])([A-Za-z0-9_]*?)" + re.escape(self._close)
        )
        self.expanded: set[str] = set()
        self.problems: list[_Problem] = []
        self.failed_paths: list[tuple[str | int, ...]] = []

    def mark(self, text: str) -> str:
        """Replace every `${VAR}` (E) and escaped `$${` (L) in the raw file by a marker; what
        is left of `${` afterwards is a malformed reference (see `_expand_string`)."""

        def marker(match: re.Match[str]) -> str:
            name = match.group(1)
            kind, name = ("L", "") if name is None else ("E", name)
            return f"{self._open}{kind}{name}{self._close}"

        return _VAR_REFERENCE.sub(marker, text)

    def expand(self, value: Any, path: tuple[str | int, ...] = ()) -> Any:
        """Return `value` with references expanded in strings, walking mappings and lists."""
        if isinstance(value, dict):
            return {self._restore(k): self.expand(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, str):
            return self._expand_string(value, path)
        return value

    def restore_text(self, text: str) -> str:
        """Put markers back to what ops wrote (for keys and YAML error messages)."""
        return self._marker.sub(
            lambda m: "$${" if m.group(1) == "L" else "${" + m.group(2) + "}", text
        )

    def _restore(self, key: Any) -> Any:
        return self.restore_text(key) if isinstance(key, str) else key

    def _expand_string(self, text: str, path: tuple[str | int, ...]) -> str:
        """Expand the references of one value. A `${` that is not a whole reference
        (`${WA_TOKEN` unclosed, `${}`, `${1BAD}`) is refused rather than kept as text: it is
        almost surely a reference mistyped, and the value would silently be those characters
        (a token, a password) instead of the variable's."""
        if "${" in text:  # markers hold no `$`: this is what no reference pattern took
            self.problems.append(_Problem(_path(*path), MALFORMED_REFERENCE))
            self.failed_paths.append(path)
            return text

        def replace(match: re.Match[str]) -> str:
            kind, name = match.group(1), match.group(2)
            if kind == "L":
                return "${"
            if name not in self._env:
                message = f"environment variable {name} is not set"
                self.problems.append(_Problem(_path(*path), message))
                self.failed_paths.append(path)
                return ""
            self.expanded.add(self._env[name])
            return self._env[name]

        return self._marker.sub(replace, text)


MAX_VALUES = 200_000
"""The most values (mappings, lists, keys, scalars) a loaded config may expand to. YAML
aliases share what they name, so a few lines of nested aliases (nine levels of nine: a
"billion laughs") expand to hundreds of millions of values once walked, which took `check`
minutes and gigabytes. A config of 1,500 agents is about 20,000 values: this leaves ten times
that and more, and is counted in a tenth of a second."""


def _check_size(document: Any, source: str) -> None:
    """Refuse a document that expands past `MAX_VALUES`, counting a shared (aliased) value
    each time it is reached, as every later step would walk it; stops as soon as the budget
    is spent, so the walk itself stays cheap."""
    budget = MAX_VALUES
    stack = [document]
    while stack:
        value = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(
                f"{source}: the config expands to more than {MAX_VALUES:,} values (YAML aliases?)"
            )
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _parse_yaml(text: str, source: str, variables: _Variables) -> Any:
    try:
        # _StrictLoader is a SafeLoader: no arbitrary Python objects from the file
        return yaml.load(variables.mark(text), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {_describe_yaml_error(exc, variables)}") from None


def _describe_yaml_error(exc: yaml.YAMLError, variables: _Variables) -> str:
    """Say where and what, without PyYAML's snippet of the line (it may hold a secret)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = variables.restore_text(exc.problem or "syntax error")
    context = f" ({variables.restore_text(exc.context)})" if exc.context else ""
    return f"{where}invalid YAML: {problem}{context}"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_T = typing.TypeVar("_T")

_PATH_HEAD = re.compile(r"([^.\[]*)(?:\[(\d+)\])?")
"""The section and first index of a key path: `channels[1].imap.host` -> channels, 1."""

_CORE_SECTIONS = (
    "server",
    "store",
    "presence",
    "outbound",
    "queues",
    "routing",
    "agents",
    "integrators",
)


class _Loader:
    """One load of one file: accumulates problems from every step, then raises them together."""

    def __init__(
        self, source: str, channel_types: Mapping[str, type[ChannelConfig]], variables: _Variables
    ) -> None:
        self.source = source
        self.channel_types = channel_types
        self.variables = variables
        self.problems: list[_Problem] = []

    def load(self, document: Any) -> GatewayConfig:
        if document is None:  # only comments (or `---`): as empty as no text at all
            raise _empty_file(self.source)
        if not isinstance(document, dict):
            raise ConfigError(f"{self.source}: expected a mapping of sections at the top level")
        raw = {k: v for k, v in self.variables.expand(document).items() if v is not None}
        self.problems += self.variables.problems
        self.problems += [
            _Problem(_path(key), f"unknown key (allowed: {', '.join(GatewayConfig.model_fields)})")
            for key in raw
            if key not in GatewayConfig.model_fields
        ]
        sections = {name: self._section(name, raw[name]) for name in _CORE_SECTIONS if name in raw}
        placed, channel_names = self._channels(raw.get("channels", []))
        channels = [c for c in placed if c is not None]
        self._cross_check(sections, raw, channel_names, placed)
        config = None if self.problems else self._build(sections, channels)
        if config is None:
            raise self._error(list(document))
        return config

    def _error(self, section_order: list[Any]) -> ConfigError:
        """One error for everything, in the order the sections appear in the file."""
        position = {key: index for index, key in enumerate(section_order)}

        def file_order(problem: _Problem) -> tuple[int, int]:
            match = _PATH_HEAD.match(problem.path)
            section, index = (match.group(1), match.group(2)) if match else ("", None)
            return position.get(section, len(position)), -1 if index is None else int(index)

        redact = _Redactor(self.variables.expanded)
        problems = sorted(self.problems, key=file_order)
        return ConfigError("\n".join(redact(p.render(self.source)) for p in problems))

    def _build(
        self, sections: dict[str, Any], channels: list[ChannelConfig]
    ) -> GatewayConfig | None:
        """Assemble the validated parts; its own cross-check passes, since ours found nothing."""
        present = {name: value for name, value in sections.items() if value is not None}

        def build(_: Any) -> GatewayConfig:
            return GatewayConfig(**present, channels=channels)

        return self._validate(build, GatewayConfig, None, ())

    def _validate(
        self, adapter: Callable[[Any], _T], root: Any, raw: Any, prefix: tuple[str | int, ...]
    ) -> _T | None:
        """Validate `raw`; on failure record its problems (minus those of missing variables)."""
        try:
            return adapter(raw)
        except ValidationError as error:
            redact = _Redactor(self.variables.expanded)
            found = _pydantic_problems(error, root, prefix, redact)
            self.problems += [p for p in found if not self._from_missing_variable(p)]
            return None

    def _from_missing_variable(self, problem: _Problem) -> bool:
        """A missing variable is reported once, not again as the invalid value it left behind."""
        return any(
            problem.path == _path(*failed) or problem.path.startswith(_path(*failed) + ".")
            for failed in self.variables.failed_paths
        )

    def _section(self, name: str, raw: Any) -> Any:
        """Validate a core section; a list is validated entry by entry (None where invalid).

        Keeping the valid entries lets the cross-checks still run on them, so a bad regex in
        one rule does not hide an unknown queue in another. A mapping section (`server`,
        `store`, ...) written as a list or a single value is refused here by name: only a
        list section has entries to validate one by one.
        """
        annotation = GatewayConfig.model_fields[name].annotation
        is_list = typing.get_origin(annotation) is list
        if not is_list and not isinstance(raw, dict):
            written = "a list" if isinstance(raw, list) else "a single value"
            message = f"expected a mapping of settings (key: value), not {written}"
            self.problems.append(_Problem(_path(name), message))
            return None
        item_type = typing.get_args(annotation)[0] if is_list and isinstance(raw, list) else None
        if item_type is None:
            whole: TypeAdapter[Any] = TypeAdapter(annotation)
            return self._validate(whole.validate_python, annotation, raw, (name,))
        item: TypeAdapter[Any] = TypeAdapter(item_type)
        return [
            self._validate(item.validate_python, item_type, entry, (name, index))
            for index, entry in enumerate(raw)
        ]

    def _channels(self, raw: Any) -> tuple[list[ChannelConfig | None], list[str | None] | None]:
        """Validate each channel with its type's model, in place (None where invalid); names
        are kept even for invalid ones."""
        if not isinstance(raw, list):
            self.problems.append(_Problem("channels", "expected a list of channels"))
            return [], None
        return [self._channel(i, entry) for i, entry in enumerate(raw)], _names(raw, "name")

    def _channel(self, index: int, entry: Any) -> ChannelConfig | None:
        path = ("channels", index)
        if not isinstance(entry, dict):
            self.problems.append(_Problem(_path(*path), "expected a mapping"))
            return None
        model = self._channel_model(index, entry.get("type"))
        if model is None:
            return None
        return self._validate(model.model_validate, model, entry, path)

    def _channel_model(self, index: int, kind: Any) -> type[ChannelConfig] | None:
        path = _path("channels", index, "type")
        known = _known(list(self.channel_types))
        if kind is None:
            self.problems.append(_Problem(path, f"field required (known types: {known})"))
        elif not isinstance(kind, str):
            self.problems.append(_Problem(path, f"expected a channel type name (known: {known})"))
        elif kind not in self.channel_types:
            self.problems.append(_Problem(path, f"unknown channel type '{kind}' (known: {known})"))
        else:
            return self.channel_types[kind]
        return None

    def _cross_check(
        self,
        sections: dict[str, Any],
        raw: dict[str, Any],
        channel_names: list[str | None] | None,
        channels: Sequence[ChannelConfig | None],
    ) -> None:
        """Run the name checks on the file's entries, so they add to the field problems."""
        routing = _read_entries(raw.get("routing", []), _RouteRefs.read)
        self.problems += _reference_problems(
            channel_names,
            _names(raw.get("queues", []), "name"),
            routing,
            _read_entries(raw.get("agents", []), _AgentRefs.read),
            sections.get("agents", []),
            sections.get("integrators", []),
            require_queue=True,
        )
        if routing is not None:
            self.problems += _route_type_problems(routing, self.channel_types)
        self.problems += _shared_channel_values(channels)


def _names(entries: Any, key: str) -> list[str | None] | None:
    """Read names straight from the file's entries, valid or not (None: not a list)."""
    if not isinstance(entries, list):
        return None
    names = [entry.get(key) if isinstance(entry, dict) else None for entry in entries]
    return [name if isinstance(name, str) else None for name in names]


def _empty_file(source: str) -> ConfigError:
    """An empty file is refused, not read as "every default": it is most likely the wrong
    file, or one a failed deploy truncated, and the defaults have no queue anyway."""
    return ConfigError(
        f"{source}: the file is empty: expected config.yaml's sections, at least one queue"
        " (queues: [{name: support}])"
    )


def parse_config(
    text: str,
    source_name: str,
    channel_types: Mapping[str, type[ChannelConfig]],
    env: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Parse config.yaml text; `source_name` prefixes every problem line.

    Raises `ConfigError` listing every problem found, one `SOURCE: KEY.PATH: expectation` per
    line. `channel_types` maps each `type:` value to its config model; `env` defaults to
    `os.environ`.
    """
    if not text.strip():  # before YAML, which would stumble on a tab where nothing else is
        raise _empty_file(source_name)
    variables = _Variables(os.environ if env is None else env)
    document = _parse_yaml(text, source_name, variables)
    _check_size(document, source_name)
    return _Loader(source_name, channel_types, variables).load(document)


def load_config(
    path: str | Path,
    channel_types: Mapping[str, type[ChannelConfig]],
    env: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Read and validate a config file; see `parse_config`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    return parse_config(text, str(path), channel_types, env)
