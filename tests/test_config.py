"""config.yaml loading: the DESIGN example loads, and every mistake is refused with its key path.

The channel models here are stand-ins for the real plugins (whatsapp, webchat, email): the
loader must validate channel entries with whatever model a type registers, and never leak
their secrets.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway.channels import ChannelConfig
from gateway.config import (
    AgentConfig,
    GatewayConfig,
    QueueConfig,
    RouteConfig,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Stand-in channel models, shaped like the real plugins' configs
# --------------------------------------------------------------------------------------------


class WhatsAppConfig(ChannelConfig):
    provider: str
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    from_: str | None = Field(default=None, validation_alias="from")
    phone_number_id: str | None = None
    access_token: SecretStr | None = None
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None


class WebchatConfig(ChannelConfig):
    allowed_origins: list[str] = []


class MailServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int
    username: str
    password: SecretStr


class EmailConfig(ChannelConfig):
    imap: MailServer
    smtp: MailServer
    address: str


CHANNEL_TYPES: dict[str, type[ChannelConfig]] = {
    "whatsapp": WhatsAppConfig,
    "webchat": WebchatConfig,
    "email": EmailConfig,
}

MARIA_TOKEN = "maria-bearer-token"
MARIA_SHA = hashlib.sha256(MARIA_TOKEN.encode()).hexdigest()
SECRET = "s3cr3t-auth-token-value"

ENV = {
    "TWILIO_ACCOUNT_SID": "AC0123456789abcdef0123456789abcdef",
    "TWILIO_AUTH_TOKEN": SECRET,
    "WA_TOKEN": "meta-access-token-value",
    "WA_APP_SECRET": "meta-app-secret-value",
    "WA_VERIFY": "meta-verify-token-value",
    "MAIL_PASSWORD": "mail-password-value",
}

# DESIGN section 3, verbatim except that its `{...}` and `"..."` placeholders are filled in.
DESIGN_EXAMPLE = f"""
server: {{host: 127.0.0.1, port: 8080, public_url: "https://gw.example.com"}}  # public_url: what providers sign
store: {{url: "sqlite:///var/lib/gateway/gateway.db"}}   # or redis://127.0.0.1:6379/0
presence: {{agent_disconnect_grace: 30s}}
channels:
  - {{name: wa-main, type: whatsapp, provider: twilio, account_sid: ${{TWILIO_ACCOUNT_SID}},
     auth_token: ${{TWILIO_AUTH_TOKEN}}, from: "whatsapp:+14155238886", reply_window: 24h}}
  - {{name: wa-cloud, type: whatsapp, provider: cloud_api, phone_number_id: "1065...",
     access_token: ${{WA_TOKEN}}, app_secret: ${{WA_APP_SECRET}}, verify_token: ${{WA_VERIFY}}}}
  - {{name: site, type: webchat, no_agent_timeout: 5m, allowed_origins: ["https://shop.example.com"]}}
  - {{name: support-mail, type: email,
     imap: {{host: imap.example.com, port: 993, username: support, password: ${{MAIL_PASSWORD}}}},
     smtp: {{host: smtp.example.com, port: 587, username: support, password: ${{MAIL_PASSWORD}}}},
     address: support@example.com}}
queues:
  - {{name: sales, distribution: automatic, strategy: least_busy}}
  - {{name: support, distribution: manual}}
routing:                      # first match wins; the last rule without `if` is the default
  - {{if: {{channel: wa-main, text: "(?i)precio|price"}}, queue: sales}}
  - {{if: {{type: email}}, queue: support}}
  - {{queue: support}}
agents:
  - {{id: maria, name: Maria Malheiro, token_sha256: "{MARIA_SHA}", queues: [sales, support], max_active: 5}}
"""  # noqa: E501 - the example's lines are as long as DESIGN writes them

MINIMAL_QUEUES = """
queues:
  - {name: sales}
  - {name: support}
"""

A_QUEUE = "\nqueues: [{name: q}]\n"
"""Appended to a config that is about something else: a file without a queue is refused."""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, CHANNEL_TYPES, env=ENV if env is None else env)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """Load a config that must be refused; return its problem lines."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return str(caught.value).splitlines()


def problem_at(lines: list[str], key_path: str) -> str:
    """The single problem line about `key_path` (asserting the file name prefixes it)."""
    found = [line for line in lines if f": {key_path}: " in line]
    assert len(found) == 1, lines
    assert found[0].split(": ", 1)[0].endswith("config.yaml")
    return found[0]


# --------------------------------------------------------------------------------------------
# What loads
# --------------------------------------------------------------------------------------------


def test_design_example_loads(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_EXAMPLE)

    assert config.server.public_url == "https://gw.example.com"
    assert config.store.backend == "sqlite"
    assert config.store.sqlite_path == Path("var/lib/gateway/gateway.db")
    assert [c.name for c in config.channels] == ["wa-main", "wa-cloud", "site", "support-mail"]
    wa_main = config.channel("wa-main")
    assert isinstance(wa_main, WhatsAppConfig)
    assert wa_main.auth_token is not None
    assert wa_main.auth_token.get_secret_value() == SECRET
    assert wa_main.from_ == "whatsapp:+14155238886"
    mail = config.channel("support-mail")
    assert isinstance(mail, EmailConfig)
    assert mail.imap.password.get_secret_value() == "mail-password-value"
    assert [q.name for q in config.queues] == ["sales", "support"]
    assert config.queue("sales").distribution == "automatic"
    assert config.queue("support").distribution == "manual"
    first_rule = config.routing[0]
    assert first_rule.if_ is not None
    assert first_rule.if_.channel == "wa-main"
    assert first_rule.if_.text == "(?i)precio|price"
    assert config.routing[2].if_ is None
    assert config.agents[0].queues == ["sales", "support"]


def test_durations_are_read_in_ops_notation(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_EXAMPLE)

    assert config.presence.agent_disconnect_grace == timedelta(seconds=30)
    assert config.channel("site").no_agent_timeout == timedelta(minutes=5)
    assert config.channel("wa-main").reply_window == timedelta(hours=24)
    assert config.channel("wa-main").policy().reply_window == timedelta(hours=24)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("90s", "1m30s"),
        ("24h", "24h"),
        ("36h", "36h"),
        ("1d", "24h"),
        ("2d", "2d"),
        ("7d12h", "7d12h"),
        ("0.5s", "0.5s"),
        ("0s", "0s"),
    ],
)
def test_durations_are_shown_as_ops_write_them(text: str, shown: str) -> None:
    """`gateway check` prints durations back: WhatsApp's window as `24h`, not `1d`."""
    from gateway.durations import format_duration, parse_duration

    assert format_duration(parse_duration(text)) == shown


def test_describe_shows_the_whatsapp_window_in_hours(tmp_path: Path) -> None:
    assert "reply_window 24h" in load(tmp_path, DESIGN_EXAMPLE).describe()


@pytest.mark.parametrize(
    ("text", "key_path", "timer"),
    [
        (
            "channels: [{name: site, type: webchat, no_agent_timeout: 0s}]",
            "channels[0].no_agent_timeout",
            True,
        ),
        ("queues: [{name: sales, requeue_after: 0s}]", "queues[0].requeue_after", True),
        ("outbound: {retry_max_delay: 0s}", "outbound.retry_max_delay", False),
        ("store: {event_retention: 0s}", "store.event_retention", False),
    ],
)
def test_zero_is_refused_where_it_cannot_mean_anything(
    tmp_path: Path, text: str, key_path: str, timer: bool
) -> None:
    """`0s` silently turned these timers off (a zero timedelta reads as none): refused now,
    naming the key, and saying how to turn a timer off."""
    line = problem_at(problems(tmp_path, text), key_path)
    assert "must be longer than 0s" in line
    assert ("null turns this timer off" in line) is timer


def test_the_event_log_is_kept_for_good_unless_a_retention_is_set(tmp_path: Path) -> None:
    config = load(tmp_path, "queues: [{name: q}]")
    assert config.store.event_retention is None
    assert "events kept for good" in config.describe()
    config = load(tmp_path, "store: {event_retention: 30d}\nqueues: [{name: q}]")
    assert config.store.event_retention == timedelta(days=30)
    assert "events kept 30d" in config.describe()
    assert "waited for up to 30s at start-up" in config.describe()
    line = problem_at(problems(tmp_path, "store: {event_retention: 1s}"), "store.event_retention")
    assert "at least 1h" in line


def test_zero_still_means_at_once_where_it_can(tmp_path: Path) -> None:
    """A zero grace sets pending at once; a zero window allows templates only."""
    config = load(
        tmp_path,
        "presence: {agent_disconnect_grace: 0s}\n"
        "channels: [{name: wa, type: whatsapp, provider: twilio,"
        " account_sid: AC00000000000000000000000000000000,"
        " auth_token: x, from: '+14155238886', reply_window: 0s}]\n"
        "queues: [{name: q}]\nrouting: [{queue: q}]",
    )
    assert config.presence.agent_disconnect_grace == timedelta(0)
    assert config.channel("wa").reply_window == timedelta(0)


def test_queue_requeue_after_is_a_duration(tmp_path: Path) -> None:
    config = load(tmp_path, "queues: [{name: sales, requeue_after: 10m}]")

    assert config.queue("sales").requeue_after == timedelta(minutes=10)


def test_outbound_retries_are_configurable_and_bound_the_takeover(tmp_path: Path) -> None:
    """Behind an SMTP relay that greylists, agent replies should retry for minutes, not
    seconds; another node must not take a delivery over while it may still be retrying."""
    from gateway.runtime import retry_policy

    default = retry_policy(load(tmp_path, A_QUEUE))
    assert (default.attempts, default.initial, default.maximum) == (5, 0.5, 30.0)
    # Five tries of up to a minute each (send_timeout) and their waits: a bit over 5 minutes.
    assert default.redeliver_after == 2 * timedelta(seconds=5 * 60 + 0.5 + 1 + 2 + 4)
    assert default.send_timeout == 60.0

    text = "outbound: {retry_attempts: 8, retry_initial: 30s, retry_max_delay: 5m}" + A_QUEUE
    config = load(tmp_path, text)
    waits = 30 + 60 + 120 + 240 + 300 * 3
    assert config.outbound.longest() == timedelta(seconds=waits + 8 * 60)
    policy = retry_policy(config)
    assert (policy.attempts, policy.initial, policy.maximum) == (8, 30.0, 300.0)
    assert policy.redeliver_after == 2 * config.outbound.longest() > timedelta(minutes=10)

    from gateway.runtime import Runtime, RuntimeOptions

    store = f"store: {{url: 'sqlite:///{tmp_path / 'g.db'}'}}\n"
    runtime = Runtime(load(tmp_path, store + text), {}, options=RuntimeOptions())
    assert runtime.outbound.retry == policy  # what serve runs with

    with pytest.raises(ConfigError, match=r"outbound\.retry_attempts"):
        load(tmp_path, "outbound: {retry_attempts: 0}")
    with pytest.raises(ConfigError, match="outbound: retry_initial must be above 0"):
        load(tmp_path, "outbound: {retry_initial: 1m, retry_max_delay: 5s}")


@pytest.mark.parametrize("text", ["", "# a queue only\n", "channels: []\n", "agents:\n"])
def test_minimal_files_load_with_defaults(tmp_path: Path, text: str) -> None:
    config = load(tmp_path, text + A_QUEUE)

    assert config.channels == []
    assert config.server.port == 8080
    assert config.store.url == "sqlite:///var/gateway.db"
    assert config.store.synchronous == "full"
    assert config.presence.agent_disconnect_grace == timedelta(seconds=30)


@pytest.mark.parametrize("text", ["", "# nothing yet\n# really\n", "  \n\n\t\n", "---\n"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    """Config audit: an empty file (or only comments) was valid, and `serve` ran on the
    defaults with no queue, creating var/gateway.db wherever it was started: most likely the
    wrong file, or one truncated by a failed deploy."""
    assert problems(tmp_path, text) == [
        f"{tmp_path / 'config.yaml'}: the file is empty: expected config.yaml's sections,"
        " at least one queue (queues: [{name: support}])"
    ]


@pytest.mark.parametrize(
    "text", ["channels: []\n", "queues: []\n", "queues:\n", "{}\n", "server: {port: 8081}\n"]
)
def test_a_config_without_a_queue_is_refused(tmp_path: Path, text: str) -> None:
    """Every conversation is routed to a queue: a gateway with none can only fail on its
    first message (the router's own error), channels or not."""
    line = problem_at(problems(tmp_path, text), "queues")
    assert line.endswith("at least one queue is required: every conversation is routed to one")


def test_variable_inside_a_string_and_escaped_reference(tmp_path: Path) -> None:
    text = 'store: {url: "redis://${REDIS_HOST}:6379/0"}\nserver: {host: "$${NOT_EXPANDED}"}\n'
    text += A_QUEUE

    config = load(tmp_path, text, env={"REDIS_HOST": "cache.internal"})

    assert config.store.url == "redis://cache.internal:6379/0"
    assert config.store.backend == "redis"
    assert config.server.host == "${NOT_EXPANDED}"


MALFORMED = (
    "an environment reference must be ${NAME} (letters, digits and _, not starting with a"
    " digit), closed by }; write $${ for a literal ${"
)


@pytest.mark.parametrize(
    "value", ["${WA_TOKEN", "${}", "${1BAD}", "${ WA_TOKEN }", "${WA-TOKEN}", "ok ${WA_TOKEN} ${"]
)
def test_a_malformed_environment_reference_is_refused(tmp_path: Path, value: str) -> None:
    """Config audit: `"${WA_TOKEN"` (unclosed), `"${}"` and `"${1BAD}"` were taken as text, so
    a token or password was silently those characters instead of the variable's value."""
    text = f"""
channels:
  - {{name: wa, type: whatsapp, provider: cloud_api, access_token: "{value}"}}
  - name: mail
    type: email
    address: s@example.com
    imap: {{host: h, port: 993, username: u, password: '{value}'}}
    smtp: {{host: h, port: 587, username: u, password: ok}}
server: {{host: "{value}"}}
presence: {{agent_disconnect_grace: "{value}"}}
queues: [{{name: q}}]
"""
    lines = problems(tmp_path, text)
    for key in (
        "channels[0].access_token",
        "channels[1].imap.password",
        "server.host",
        "presence.agent_disconnect_grace",  # once: not also as a bad duration
    ):
        assert problem_at(lines, key).endswith(MALFORMED)
    assert len(lines) == 4, lines
    assert ENV["WA_TOKEN"] not in "\n".join(lines)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("$${WA_TOKEN}", "${WA_TOKEN}"),
        ("$${", "${"),
        ("a$${b", "a${b"),
        ("$$${WA_TOKEN}", "$${WA_TOKEN}"),
        ("pa$$word $x {y} $", "pa$$word $x {y} $"),
        ("$${WA_TOKEN} ${WA_VERIFY}", "${WA_TOKEN} meta-verify-token-value"),
    ],
)
def test_a_literal_dollar_is_written_as_before(tmp_path: Path, written: str, read: str) -> None:
    """A `$` not followed by `{` is itself; `$${` is a literal `${` (so `$${VAR}` is the text
    `${VAR}`, as it always was)."""
    config = load(tmp_path, f"server: {{host: '{written}'}}" + A_QUEUE)
    assert config.server.host == read


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_PORT", "9090")

    config = parse_config("server: {port: ${GW_TEST_PORT}}" + A_QUEUE, "config.yaml", CHANNEL_TYPES)

    assert config.server.port == 9090


@pytest.mark.parametrize(
    "url", ["sqlite:///relative/path.db", "sqlite:////abs/path.db", "rediss://h:6380/1"]
)
def test_store_urls_accepted(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, f'store: {{url: "{url}"}}' + A_QUEUE).store.url == url


def test_absolute_sqlite_path(tmp_path: Path) -> None:
    config = load(tmp_path, 'store: {url: "sqlite:////abs/path.db"}' + A_QUEUE)

    assert config.store.sqlite_path == Path("/abs/path.db")


def test_lookups(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_EXAMPLE)

    assert config.agent_by_token(MARIA_TOKEN) == config.agents[0]
    assert config.agent_by_token("wrong") is None
    assert [a.id for a in config.agents_on_queue("sales")] == ["maria"]
    assert config.agents_on_queue("nobody-here") == []
    with pytest.raises(KeyError):
        config.channel("nope")
    with pytest.raises(KeyError):
        config.queue("nope")


def test_no_routing_rules_is_valid(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL_QUEUES)

    assert config.routing == []
    assert "otherwise -> sales" in config.describe()


# --------------------------------------------------------------------------------------------
# What is refused, and how it is reported
# --------------------------------------------------------------------------------------------


def test_missing_env_var_names_variable_and_key(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "TWILIO_AUTH_TOKEN"}

    lines = problems(tmp_path, DESIGN_EXAMPLE, env=env)

    assert lines == [
        f"{tmp_path / 'config.yaml'}: channels[0].auth_token: "
        "environment variable TWILIO_AUTH_TOKEN is not set"
    ]


def test_missing_env_var_in_nested_value(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "MAIL_PASSWORD"}

    lines = problems(tmp_path, DESIGN_EXAMPLE, env=env)

    assert "MAIL_PASSWORD" in problem_at(lines, "channels[3].imap.password")
    assert "MAIL_PASSWORD" in problem_at(lines, "channels[3].smtp.password")
    assert len(lines) == 2


def test_unknown_top_level_key(tmp_path: Path) -> None:
    line = problem_at(problems(tmp_path, "serverr: {port: 1}"), "serverr")

    assert "unknown key" in line
    assert "server" in line


def test_unknown_nested_key_lists_allowed_keys(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + "routing: [{if: {channel_: x}, queue: sales}]\n"

    line = problem_at(problems(tmp_path, text), "routing[0].if.channel_")

    assert line.endswith("unknown key (allowed: channel, type, text, from)")


def test_unknown_key_in_channel_uses_channel_model(tmp_path: Path) -> None:
    text = "channels: [{name: site, type: webchat, allowed_origin: []}]\n" + MINIMAL_QUEUES

    line = problem_at(problems(tmp_path, text), "channels[0].allowed_origin")

    assert "unknown key" in line
    assert "allowed_origins" in line


def test_trusted_proxies_are_networks(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {trusted_proxies: [10.0.0.0/8, 'fd00::/8']}" + A_QUEUE)
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]

    line = problem_at(
        problems(tmp_path, "server: {trusted_proxies: [the-balancer]}"), "server.trusted_proxies[0]"
    )

    assert "network" in line


def test_true_or_false_for_a_number_is_refused(tmp_path: Path) -> None:
    """pydantic alone would read `port: true` as port 1."""
    line = problem_at(problems(tmp_path, "server: {port: true}"), "server.port")
    assert "expected a number, not true or false" in line
    text = "agents: [{id: a, token_sha256: '" + "0" * 64 + "', queues: [q], max_active: true}]"
    line = problem_at(problems(tmp_path, text + "\nqueues: [{name: q}]"), "agents[0].max_active")
    assert "expected a number, not true or false" in line


@pytest.mark.parametrize(("port", "problem"), [(0, "greater than or equal to 1"), (65536, "65535")])
def test_a_port_out_of_range_is_refused(tmp_path: Path, port: int, problem: str) -> None:
    """Port 0 is the system's pick, which nobody would be told (the `serving on` line, the
    providers and the agents all need the real one)."""
    line = problem_at(problems(tmp_path, f"server: {{port: {port}}}" + A_QUEUE), "server.port")
    assert problem in line


def test_wrong_type(tmp_path: Path) -> None:
    line = problem_at(problems(tmp_path, "server: {port: eighty}"), "server.port")

    assert "valid integer" in line
    assert "eighty" not in line


def test_wrong_literal_says_what_is_allowed(tmp_path: Path) -> None:
    line = problem_at(
        problems(tmp_path, "queues: [{name: q, strategy: fastest}]"), "queues[0].strategy"
    )

    assert "'least_busy' or 'round_robin'" in line


@pytest.mark.parametrize(
    "queue",
    ["{name: q, strategy: round_robin}", "{name: q, distribution: manual, strategy: least_busy}"],
)
def test_a_strategy_on_a_manual_queue_is_refused(tmp_path: Path, queue: str) -> None:
    """Config audit: a strategy on a manual queue loaded and did nothing; whoever wrote it
    expects automatic assignment. README's examples set none on a manual queue."""
    line = problem_at(problems(tmp_path, f"queues: [{queue}]"), "queues[0].strategy")
    assert line.endswith(
        "a strategy only applies to distribution: automatic; this queue is manual (agents"
        " accept its conversations themselves): remove strategy, or set distribution: automatic"
    )
    with pytest.raises(ValidationError, match="a strategy only applies to distribution"):
        QueueConfig(name="q", strategy="round_robin")


def test_a_strategy_on_an_automatic_queue_loads(tmp_path: Path) -> None:
    text = "queues: [{strategy: round_robin, distribution: automatic, name: q}, {name: m}]"
    config = load(tmp_path, text)
    assert config.queue("q").strategy == "round_robin"
    assert config.queue("m").distribution == "manual"


def test_a_wrong_value_that_is_part_of_an_allowed_one_leaves_it_readable(tmp_path: Path) -> None:
    """The wrong value is hidden (it may be a secret), but only where it stands on its own."""
    line = problem_at(
        problems(tmp_path, "queues: [{name: q, strategy: least}]"), "queues[0].strategy"
    )

    assert "'least_busy' or 'round_robin'" in line


def test_missing_channel_field(tmp_path: Path) -> None:
    text = "channels: [{name: wa, type: whatsapp}]\n" + MINIMAL_QUEUES

    assert problem_at(problems(tmp_path, text), "channels[0].provider").endswith("field required")


def test_bad_duration(tmp_path: Path) -> None:
    line = problem_at(
        problems(tmp_path, "presence: {agent_disconnect_grace: soon}"),
        "presence.agent_disconnect_grace",
    )

    assert "30s, 5m or 24h" in line


@pytest.mark.parametrize(
    ("written", "env", "seconds"),
    [
        ('"30"', {}, 30),
        ("' 45 '", {}, 45),
        ('"1.5"', {}, 1.5),
        ("${GRACE}", {"GRACE": "30"}, 30),
        ('"${GRACE}"', {"GRACE": "120"}, 120),
        ("${GRACE}", {"GRACE": "2m"}, 120),
        ("30", {}, 30),
    ],
)
def test_a_number_of_seconds_may_be_written_as_text(
    tmp_path: Path, written: str, env: dict[str, str], seconds: float
) -> None:
    """Config audit: README says a bare number is seconds, but `"30"` (and `${GRACE}` with
    GRACE=30: a variable always expands to text) was refused where `30` loaded."""
    text = f"presence: {{agent_disconnect_grace: {written}}}\n"
    text += f"channels: [{{name: wa, type: whatsapp, provider: twilio, reply_window: {written}}}]"
    config = load(tmp_path, text + A_QUEUE, env=env)
    assert config.presence.agent_disconnect_grace == timedelta(seconds=seconds)
    assert config.channel("wa").reply_window == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value", ["5x", "-1m", "-1", "inf", "nan", "1e3", "30 s", "1.", ".5", "0x1e", "\u0663\u0660"]
)
def test_other_text_is_still_not_a_duration(tmp_path: Path, value: str) -> None:
    line = problem_at(
        problems(
            tmp_path, "presence: {agent_disconnect_grace: ${GRACE}}" + A_QUEUE, {"GRACE": value}
        ),
        "presence.agent_disconnect_grace",
    )
    assert "expected a duration such as 30s, 5m or 24h" in line


@pytest.mark.parametrize("value", ["99999999999999d", ".inf", ".nan", "1.0e+300"])
def test_a_duration_past_a_century_is_a_problem_not_a_crash(tmp_path: Path, value: str) -> None:
    line = problem_at(
        problems(tmp_path, f"presence: {{agent_disconnect_grace: {value}}}"),
        "presence.agent_disconnect_grace",
    )

    assert "at most 36500 days" in line


def test_store_scheme_refused(tmp_path: Path) -> None:
    line = problem_at(problems(tmp_path, 'store: {url: "postgres://db/gw"}'), "store.url")

    assert "redis://" in line
    assert "postgres" not in line


def test_duplicate_channel_names(tmp_path: Path) -> None:
    text = "channels: [{name: site, type: webchat}, {name: site, type: webchat}]\n"

    line = problem_at(problems(tmp_path, text + MINIMAL_QUEUES), "channels[1].name")

    assert "duplicate channel name 'site'" in line


def test_duplicate_queue_names_and_agent_ids(tmp_path: Path) -> None:
    text = f"""
queues: [{{name: sales}}, {{name: sales}}]
agents:
  - {{id: ana, token_sha256: "{"a" * 64}", queues: [sales]}}
  - {{id: ana, token_sha256: "{"b" * 64}", queues: [sales]}}
"""
    lines = problems(tmp_path, text)

    assert "duplicate queue name 'sales'" in problem_at(lines, "queues[1].name")
    assert "duplicate agent id 'ana'" in problem_at(lines, "agents[1].id")


def test_two_agents_with_one_token(tmp_path: Path) -> None:
    text = f"""
queues: [{{name: sales}}]
agents:
  - {{id: ana, token_sha256: "{MARIA_SHA}", queues: [sales]}}
  - {{id: bob, token_sha256: "{MARIA_SHA}", queues: [sales]}}
"""
    line = problem_at(problems(tmp_path, text), "agents[1].token_sha256")

    assert MARIA_SHA not in line


def test_integrators_load_and_are_checked_with_the_agents(tmp_path: Path) -> None:
    ok = f"""
queues: [{{name: sales}}]
agents: [{{id: ana, token_sha256: "{"a" * 64}", queues: [sales]}}]
integrators: [{{name: crm, token_sha256: "{"b" * 64}"}}]
"""
    config = load(tmp_path, ok)
    assert [(i.name, i.token_sha256) for i in config.integrators] == [("crm", "b" * 64)]
    assert "integrators (1): crm" in config.describe()

    bad = f"""
queues: [{{name: sales}}]
agents: [{{id: ana, token_sha256: "{MARIA_SHA}", queues: [sales]}}]
integrators:
  - {{name: crm, token_sha256: "{MARIA_SHA}"}}
  - {{name: crm, token_sha256: "{"c" * 64}"}}
  - {{name: bi, token_sha256: "not-a-hash", queues: [sales]}}
"""
    lines = problems(tmp_path, bad)
    shared = problem_at(lines, "integrators[0].token_sha256")
    assert "same token as agents[0]" in shared and MARIA_SHA not in shared
    assert "duplicate integrator name 'crm'" in problem_at(lines, "integrators[1].name")
    assert "should match pattern" in problem_at(lines, "integrators[2].token_sha256")
    assert "unknown key (allowed: name, token_sha256)" in problem_at(lines, "integrators[2].queues")


def test_route_to_unknown_queue(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + "routing: [{queue: salez}]\n"

    lines = problems(tmp_path, text)

    assert lines == [
        f"{tmp_path / 'config.yaml'}: routing[0].queue: "
        "unknown queue 'salez' (known: sales, support)"
    ]


def test_route_to_unknown_channel_and_type(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + "routing: [{if: {channel: wa, type: sms}, queue: sales}]\n"

    lines = problems(tmp_path, text)

    assert "unknown channel 'wa'" in problem_at(lines, "routing[0].if.channel")
    assert "email, webchat, whatsapp" in problem_at(lines, "routing[0].if.type")


def test_default_rule_must_be_last(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + "routing: [{queue: sales}, {if: {type: email}, queue: support}]\n"

    assert "last rule" in problem_at(problems(tmp_path, text), "routing[0]")


def test_empty_if_is_refused(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + "routing: [{if: {}, queue: sales}]\n"

    assert "empty 'if'" in problem_at(problems(tmp_path, text), "routing[0].if")


def test_agent_on_unknown_queue(tmp_path: Path) -> None:
    text = (
        MINIMAL_QUEUES + f'agents: [{{id: ana, token_sha256: "{MARIA_SHA}", queues: [sales, vip]}}]'
    )

    line = problem_at(problems(tmp_path, text), "agents[0].queues[1]")

    assert "unknown queue 'vip' (known: sales, support)" in line


def test_an_agent_listing_a_queue_twice_is_refused(tmp_path: Path) -> None:
    """Config audit: `queues: [sales, support, sales]` loaded; most likely another queue was
    meant, which the agent then silently lacks."""
    text = MINIMAL_QUEUES + (
        f'agents: [{{id: ana, token_sha256: "{MARIA_SHA}", queues: [sales, support, sales]}}]'
    )
    line = problem_at(problems(tmp_path, text), "agents[0].queues[2]")
    assert line.endswith("queue 'sales' is listed twice (see agents[0].queues[0])")
    with pytest.raises(ValidationError, match=r"agents\[0\]\.queues\[1\]: queue 'sales' is listed"):
        GatewayConfig(
            queues=[QueueConfig(name="sales")],
            agents=[AgentConfig(id="ana", token_sha256=MARIA_SHA, queues=["sales", "sales"])],
        )


def test_agent_fields(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + 'agents: [{id: ana, token_sha256: "ABC", queues: [], max_active: 0}]'

    lines = problems(tmp_path, text)

    assert "pattern" in problem_at(lines, "agents[0].token_sha256")
    assert "at least 1" in problem_at(lines, "agents[0].queues")
    assert "greater than or equal to 1" in problem_at(lines, "agents[0].max_active")


def test_channels_need_a_queue(tmp_path: Path) -> None:
    lines = problems(tmp_path, "channels: [{name: site, type: webchat}]")

    assert "at least one queue" in problem_at(lines, "queues")


def test_unknown_channel_type_lists_known_types(tmp_path: Path) -> None:
    text = "channels: [{name: x, type: telegram}]\n" + MINIMAL_QUEUES

    line = problem_at(problems(tmp_path, text), "channels[0].type")

    assert "unknown channel type 'telegram' (known: email, webchat, whatsapp)" in line


def test_channel_without_type(tmp_path: Path) -> None:
    text = "channels: [{name: x}]\n" + MINIMAL_QUEUES

    assert "field required" in problem_at(problems(tmp_path, text), "channels[0].type")


def test_bad_regex(tmp_path: Path) -> None:
    text = MINIMAL_QUEUES + 'routing: [{if: {text: "(precio"}, queue: sales}]\n'

    line = problem_at(problems(tmp_path, text), "routing[0].if.text")

    assert "not a valid regular expression" in line


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = "server:\n  host: 127.0.0.1\n  port: [8080\nstore: {}\n"

    lines = problems(tmp_path, text)

    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'config.yaml'}: line ")
    assert "invalid YAML" in lines[0]


def test_yaml_duplicate_key_is_refused(tmp_path: Path) -> None:
    lines = problems(tmp_path, "queues: [{name: a}]\nqueues: [{name: b}]\n")

    assert lines == [f"{tmp_path / 'config.yaml'}: line 2: invalid YAML: duplicate key 'queues'"]


def alias_levels(levels: int, width: int = 9) -> list[str]:
    """The audit's YAML: each level (anchored `l<n>`) a list of `width` aliases of the one
    before, so the last one expands to width ** levels values."""
    first = f"&l0 [{', '.join(['x'] * width)}]"
    return [first] + [f"&l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)]


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """Config audit: nine nested anchors of nine aliases each (the audit's file: top-level keys,
    no queue) made `gateway check` run for minutes, past 476 MB; the loaded document is now
    measured first, every alias counted each time it is reached."""
    import time

    text = "\n".join(
        f"{key}: {level}" for key, level in zip("abcdefghi", alias_levels(9), strict=True)
    )
    started = time.monotonic()
    lines = problems(tmp_path, text)
    assert time.monotonic() - started < 5
    assert lines == [
        f"{tmp_path / 'config.yaml'}: the config expands to more than 200,000 values"
        " (YAML aliases?)"
    ]


def test_a_yaml_alias_bomb_inside_a_section_is_refused(tmp_path: Path) -> None:
    levels = alias_levels(6)  # the last expands to 9^6 = 531,441 values
    text = f"server: {{trusted_proxies: [{', '.join(levels)}]}}" + A_QUEUE
    assert "expands to more than 200,000 values" in problems(tmp_path, text)[0]
    # Under the bound (9^5 = 59,049), such a file is measured in full and read as usual:
    # here, lists where networks belong.
    text = f"server: {{trusted_proxies: [{', '.join(levels[:5])}]}}" + A_QUEUE
    lines = problems(tmp_path, text)
    assert len(lines) == 5 and "expands" not in "\n".join(lines), lines


def test_ordinary_anchors_and_aliases_still_load(tmp_path: Path) -> None:
    """Sharing settings between entries is what anchors are for."""
    text = f"""
queues: [{{name: sales}}, {{name: support}}]
agents:
  - {{id: ana, token_sha256: "{"a" * 64}", queues: &both [sales, support], max_active: &max 3}}
  - {{id: bob, token_sha256: "{"b" * 64}", queues: *both, max_active: *max}}
routing:
  - {{if: &wa {{type: whatsapp}}, queue: sales}}
  - {{queue: support}}
"""
    config = load(tmp_path, text)
    assert [a.queues for a in config.agents] == [["sales", "support"], ["sales", "support"]]
    assert config.agents[1].max_active == 3


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in problems(tmp_path, "- a\n- b\n")[0]


MAPPING_SECTIONS = ["server", "store", "presence", "outbound"]
LIST_SECTIONS = ["channels", "queues", "routing", "agents", "integrators"]


@pytest.mark.parametrize("written", ["[1, 2]", "[a]", '"x"', "5", "true"])
@pytest.mark.parametrize("section", MAPPING_SECTIONS)
def test_a_mapping_section_written_as_a_list_or_a_value_is_refused(
    tmp_path: Path, section: str, written: str
) -> None:
    """Config audit: `server: [1, 2]` crashed the loader with an IndexError traceback (it took
    any list for a list section); it is one problem at the section's key, like `server: x`."""
    text = f"{section}: {written}\nqueues: [{{name: q}}]\n"
    line = problem_at(problems(tmp_path, text), section)
    shape = "a list" if written.startswith("[") else "a single value"
    assert line.endswith(f"expected a mapping of settings (key: value), not {shape}")


@pytest.mark.parametrize("written", ["{a: 1}", '"x"', "5", "[[1]]"])
@pytest.mark.parametrize("section", LIST_SECTIONS)
def test_a_list_section_written_as_a_mapping_or_a_value_is_refused(
    tmp_path: Path, section: str, written: str
) -> None:
    text = f"{section}: {written}\n" + ("" if section == "queues" else "queues: [{name: q}]\n")
    lines = problems(tmp_path, text)
    if written == "[[1]]":  # a list, of something that is not an entry: said per entry
        assert "mapping" in problem_at(lines, f"{section}[0]").replace("dictionary", "mapping")
    else:
        assert "list" in problem_at(lines, section)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", CHANNEL_TYPES, env={})


def test_several_problems_reported_together_in_file_order(tmp_path: Path) -> None:
    text = """
server: {port: -1}
channels:
  - {name: site, type: webchat, bogus: 1}
  - {name: mail, type: fax}
queues: [{name: sales, distribution: sometimes}]
routing: [{queue: salez}]
"""
    lines = problems(tmp_path, text)

    paths = [line.split(": ")[1] for line in lines]
    assert paths == [
        "server.port",
        "channels[0].bogus",
        "channels[1].type",
        "queues[0].distribution",
        "routing[0].queue",
    ]


def test_an_entry_with_a_bad_field_still_has_its_unknown_names_reported(tmp_path: Path) -> None:
    """A rule with a bad regex, or an agent with a bad token hash, may also name a queue or a
    channel that does not exist: every mistake is reported in one run, not one per fix (ops
    audit: the unknown names appeared only once the first mistake was fixed)."""
    text = """
channels: [{name: site, type: webchat}]
queues: [{name: sales}]
routing:
  - {if: {channel: nochan, text: "(unclosed"}, queue: nowhere}
  - {if: {type: fax, from: [1]}, queue: elsewhere}
agents:
  - {id: maria, token_sha256: "abc", queues: [nowhere, 7, sales]}
  - {id: maria, token_sha256: "abc", queues: sales}
"""
    lines = problems(tmp_path, text)

    assert [line.split(": ", 1)[1] for line in lines] == [
        "routing[0].if.text: not a valid regular expression: missing ) at position 9",
        "routing[0].queue: unknown queue 'nowhere' (known: sales)",
        "routing[0].if.channel: unknown channel 'nochan' (known: site)",
        "routing[1].if.from: input should be a valid string",
        "routing[1].queue: unknown queue 'elsewhere' (known: sales)",
        "routing[1].if.type: unknown channel type 'fax' (known: email, webchat, whatsapp)",
        "agents[0].token_sha256: string should match pattern '^[0-9a-f]{64}$'",
        "agents[0].queues[1]: input should be a valid string",
        "agents[0].queues[0]: unknown queue 'nowhere' (known: sales)",
        "agents[1].token_sha256: string should match pattern '^[0-9a-f]{64}$'",
        "agents[1].queues: input should be a valid list",
        "agents[1].id: duplicate agent id 'maria' (see agents[0])",
    ]


# --------------------------------------------------------------------------------------------
# Secrets never shown
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "reply_window",  # the duration parser's own message quotes its input
        "max_body_bytes",
        "account_sid: 1, auth_token",
        "unknown_field",
    ],
)
def test_secret_from_env_never_in_error(tmp_path: Path, field: str) -> None:
    text = f"""
channels:
  - {{name: wa, type: whatsapp, provider: twilio, {field}: ${{TWILIO_AUTH_TOKEN}}}}
  - {{name: wa, type: whatsapp, provider: twilio, account_sid: [${{TWILIO_AUTH_TOKEN}}]}}
queues: [{{name: sales}}]
routing: [{{if: {{channel: wa, text: "${{TWILIO_AUTH_TOKEN}}("}}, queue: sales}}]
"""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)

    for shown in (str(caught.value), repr(caught.value), caught.value.message):
        assert SECRET not in shown
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_literal_secret_in_broken_yaml_is_not_quoted(tmp_path: Path) -> None:
    text = f"channels:\n  - {{name: wa, auth_token: {SECRET}: oops}}\n"

    lines = problems(tmp_path, text)

    assert SECRET not in "\n".join(lines)


def test_describe_shows_structure_but_no_secret(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_EXAMPLE)

    summary = config.describe()

    for value in ENV.values():
        assert value not in summary
    assert MARIA_SHA not in summary
    assert "wa-main: type whatsapp" in summary
    assert "sales: automatic, least_busy" in summary
    assert "support: manual" in summary
    assert (
        "routing[0]: channel is 'wa-main' and text matches /(?i)precio|price/ -> sales" in summary
    )
    assert "routing[2]: always -> support" in summary
    assert "maria (Maria Malheiro): queues sales, support" in summary


def test_describe_hides_store_password(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'store: {url: "redis://:${REDIS_PASSWORD}@cache:6379/0"}' + A_QUEUE,
        {"REDIS_PASSWORD": SECRET},
    )

    assert SECRET in config.store.url
    assert SECRET not in config.describe()
    assert "redis://***@cache:6379/0" in config.describe()


# --------------------------------------------------------------------------------------------
# The model on its own
# --------------------------------------------------------------------------------------------


def test_direct_construction_runs_the_cross_checks() -> None:
    with pytest.raises(ValidationError, match=r"routing\[0\]\.queue: unknown queue 'nope'"):
        GatewayConfig(
            queues=[QueueConfig(name="sales")],
            routing=[RouteConfig(queue="nope")],
        )


def test_models_are_frozen() -> None:
    agent = AgentConfig(id="ana", token_sha256=MARIA_SHA, queues=["sales"])

    with pytest.raises(ValidationError):
        agent.max_active = 9


class LeakyConfig(ChannelConfig):
    """A careless plugin whose validator quotes a secret in its error message."""

    api_key: SecretStr

    @model_validator(mode="after")
    def _check_key(self) -> LeakyConfig:
        raise ValueError(f"key {self.api_key.get_secret_value()} is not accepted by the provider")


def test_secret_quoted_by_a_plugin_validator_is_hidden() -> None:
    text = "channels: [{name: x, type: leaky, api_key: ${TWILIO_AUTH_TOKEN}}]\nqueues: [{name: q}]"

    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml", {"leaky": LeakyConfig}, env=ENV)

    assert SECRET not in str(caught.value)
    assert "channels[0]: key <value hidden> is not accepted" in str(caught.value)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?prefx=gw2", "unknown Redis URL option 'prefx'"),
        ("?socket_timeout=abc", "invalid Redis URL: Invalid value for 'socket_timeout'"),
        ("?prefix=a{b}", "prefix= must be"),
        ("?prefix=", "prefix= must be"),
    ],
)
def test_redis_url_options_are_checked_at_load(tmp_path: Path, query: str, problem: str) -> None:
    """redis-py only refuses a bad option when it first connects: `check` called such a config
    valid and `serve` died with a traceback. The password never shows in the problem."""
    text = f'store: {{url: "redis://:{SECRET}@cache:6379/0{query}"}}'
    line = problem_at(problems(tmp_path, text), "store.url")
    assert problem in line and SECRET not in line


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("/abc", "the URL's path is the database number: / or /<number>, such as /0"),
        ("/1/2", "the URL's path is the database number"),
        ("/-1", "the URL's path is the database number"),
        ("/0/", "the URL's path is the database number"),
        ("?db=x", "db= must be a database number, such as db=0"),
        ("/?db=-1", "db= must be a database number"),
        ("/0?db=3", "the database is selected more than once, differently (0 and 3)"),
        ("?db=1&db=2", "the database is selected more than once, differently (1 and 2)"),
    ],
)
def test_a_redis_database_that_is_not_a_number_is_refused(
    tmp_path: Path, tail: str, problem: str
) -> None:
    """Config audit: `redis://host:6379/abc` passed check and redis-py silently used database
    0 (and reads `/1/2` as 12; `?db=` wins over the path). The password stays hidden."""
    text = f'store: {{url: "redis://:{SECRET}@cache:6379{tail}"}}' + A_QUEUE
    line = problem_at(problems(tmp_path, text), "store.url")
    assert problem in line and SECRET not in line


@pytest.mark.parametrize("tail", ["", "/", "/0", "/15", "?db=2", "/3?db=3", "/0?socket_timeout=2"])
def test_a_redis_database_written_as_a_number_is_accepted(tmp_path: Path, tail: str) -> None:
    url = f"redis://:{SECRET}@cache:6379{tail}"
    assert load(tmp_path, f'store: {{url: "{url}"}}' + A_QUEUE).store.url == url


def test_redis_url_options_redis_py_knows_are_accepted(tmp_path: Path) -> None:
    url = "rediss://cache:6380/2?socket_timeout=2&health_check_interval=5&ssl_cert_reqs=none"
    config = load(tmp_path, f'store: {{url: "{url}&prefix=app:gw"}}' + A_QUEUE)
    assert config.store.backend == "redis"
    assert "synchronous" not in config.describe()  # a SQLite setting


# --------------------------------------------------------------------------------------------
# Settings of the real plugins that load but cannot work
# --------------------------------------------------------------------------------------------


def real_channels(tmp_path: Path, channels: str, env: dict[str, str] | None = None) -> list[str]:
    """Load `channels` (YAML list entries) with the installed plugins' own models; return the
    problem lines, or [] when the file loads."""
    from gateway.pluginmanager import channel_types, config_models, get_plugin_manager

    path = tmp_path / "config.yaml"
    path.write_text(f"channels:\n{channels}\nqueues: [{{name: q}}]\n", encoding="utf-8")
    models = config_models(channel_types(get_plugin_manager()))
    try:
        load_config(path, models, env=env or {})
    except ConfigError as error:
        return str(error).splitlines()
    return []


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        ("shop.example.com", "an origin starts with its scheme, such as https://"),
        ("www.example.org", "an origin starts with its scheme, such as https://shop.example.com"),
        ("https://shop.example.com/path", "an origin has no path (not even '/'), query or"),
        ("https://shop.example.com/", "an origin has no path (not even '/')"),
        ("https://shop.example.com?a=1", "an origin has no path (not even '/'), query or fragment"),
        ("ftp://shop.example.com", "expected an http:// or https:// origin"),
        ("https://Shop.example.com", "write the origin in lower case, as browsers send it"),
        ("https://shop.example.com:443", "leave out the default port :443"),
        ("http://shop.example.com:80", "leave out the default port :80"),
        ("https://user@shop.example.com", "an origin has no user or password"),
        ("https://shop.example.com:70000", "an origin's port is 1 to 65535"),
        ("https://", "expected an origin such as https://shop.example.com"),
        ("null", "an origin starts with its scheme"),
    ],
)
def test_a_web_chat_origin_browsers_never_send_is_refused(
    tmp_path: Path, origin: str, problem: str
) -> None:
    """Config audit: `shop.example.com` (no scheme) and `https://shop.example.com/path`
    loaded, and then every visitor of that site was refused `origin_not_allowed`: a browser's
    Origin is `scheme://host[:port]`, compared as exact text."""
    channels = (
        f'  - {{name: site, type: webchat, allowed_origins: ["https://ok.example", "{origin}"]}}'
    )
    line = problem_at(real_channels(tmp_path, channels), "channels[0].allowed_origins[1]")
    assert problem in line


@pytest.mark.parametrize(
    "origin",
    [
        "*",
        "https://shop.example.com",
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
        "https://a_b.example:8443",
    ],
)
def test_a_web_chat_origin_as_browsers_send_it_loads(tmp_path: Path, origin: str) -> None:
    channels = f'  - {{name: site, type: webchat, allowed_origins: ["{origin}"]}}'
    assert real_channels(tmp_path, channels) == []


@pytest.mark.parametrize("length", [0, 1, 16, 31])
def test_a_short_web_chat_secret_is_refused_without_showing_it(tmp_path: Path, length: int) -> None:
    """Config audit: a secret of a few characters loaded; every visitor holds a token signed
    with it, so it could be guessed offline and any visitor's token forged."""
    secret = ("Q7X" * 11)[:length]  # letters the message has no use for
    channels = "  - {name: site, type: webchat, secret: '${CHAT_SECRET}'}"
    lines = real_channels(tmp_path, channels, env={"CHAT_SECRET": secret})
    line = problem_at(lines, "channels[0].secret")
    assert "a signing secret needs at least 32 characters" in line
    assert "or leave it out to have one generated" in line
    assert length == 0 or secret not in line


def test_a_web_chat_secret_of_32_characters_loads(tmp_path: Path) -> None:
    channels = "  - {name: site, type: webchat, secret: '${CHAT_SECRET}'}"
    assert real_channels(tmp_path, channels, env={"CHAT_SECRET": "k" * 32}) == []


@pytest.mark.parametrize("rate", ["0/minute", "0 per second", "00/day"])
@pytest.mark.parametrize("key", ["session_rate_limit", "message_rate_limit"])
def test_a_rate_of_zero_is_refused(tmp_path: Path, key: str, rate: str) -> None:
    """Config audit: `0/minute` loaded, and the limiter then refused every request."""
    channels = f"  - {{name: site, type: webchat, {key}: '{rate}'}}"
    line = problem_at(real_channels(tmp_path, channels), f"channels[0].{key}")
    assert line.endswith(
        "a rate of 0 would refuse every request: allow at least 1 (null turns the limit off)"
    )


def test_a_rate_of_one_or_none_loads(tmp_path: Path) -> None:
    channels = (
        "  - {name: site, type: webchat, session_rate_limit: 1/day, message_rate_limit: null}"
    )
    assert real_channels(tmp_path, channels) == []


TWILIO = (
    "  - {{name: {name}, type: whatsapp, provider: twilio, auth_token: t,"
    " account_sid: AC00000000000000000000000000000000, from: '{sender}'}}"
)


@pytest.mark.parametrize("second", ["whatsapp:+14155238886", "+14155238886"])
def test_two_twilio_channels_sending_from_one_number_are_refused(
    tmp_path: Path, second: str
) -> None:
    """Config audit: two Twilio channels with the same `from` loaded; Twilio posts a number's
    messages to the one webhook URL the number has, so one of them never hears its customers
    (`+1415...` is shorthand for `whatsapp:+1415...`, the same number)."""
    channels = "\n".join(
        [
            TWILIO.format(name="wa-a", sender="whatsapp:+14155238886"),
            TWILIO.format(name="wa-b", sender="whatsapp:+14155230000"),
            TWILIO.format(name="wa-c", sender=second),
        ]
    )
    line = problem_at(real_channels(tmp_path, channels), "channels[2].from")
    assert line.endswith(
        "'whatsapp:+14155238886' is already the from of channels[0]: one from, one channel"
    )


def mail_channel(name: str, host: str, user: str, mailbox: str, port: int = 993) -> str:
    return (
        f"  - {{name: {name}, type: email, address: {name}@example.com,"
        f" imap: {{host: {host}, port: {port}, username: {user}, password: p, mailbox: {mailbox}}},"
        " smtp: {host: smtp.example.com}}"
    )


@pytest.mark.parametrize(
    ("host", "user", "mailbox", "port"),
    [
        ("imap.example.com", "support", "INBOX", 993),
        ("IMAP.Example.com", "support", "inbox", 143),  # the same mailbox, written otherwise
        ("imap.example.com.", "support", "INBOX", 993),  # the host's root dot (re-audit)
    ],
)
def test_two_email_channels_reading_one_mailbox_are_refused(
    tmp_path: Path, host: str, user: str, mailbox: str, port: int
) -> None:
    """Config audit: two email channels on one IMAP host, user and mailbox loaded; each would
    import every mail, so every customer mail opened two conversations."""
    channels = "\n".join(
        [
            mail_channel("mail-a", "imap.example.com", "support", "INBOX"),
            mail_channel("mail-b", "imap.example.com", "support", "Sales"),
            mail_channel("mail-c", "imap.example.com", "sales", "INBOX"),
            mail_channel("mail-d", host, user, mailbox, port),
        ]
    )
    line = problem_at(real_channels(tmp_path, channels), "channels[3].imap")
    assert line.endswith(
        "'imap://support@imap.example.com/INBOX' is already the imap of channels[0]:"
        " one imap, one channel"
    )


def test_a_folder_named_as_written_and_in_modified_utf7_is_one_mailbox(tmp_path: Path) -> None:
    """Re-audit: `Atención` and `Atenci&APM-n` (how IMAP spells it) are one folder."""
    channels = "\n".join(
        [
            mail_channel("mail-a", "imap.example.com", "support", '"Atención"'),
            mail_channel("mail-b", "imap.example.com", "support", '"Atenci&APM-n"'),
        ]
    )
    line = problem_at(real_channels(tmp_path, channels), "channels[1].imap")
    assert "is already the imap of channels[0]" in line


def test_two_email_channels_sharing_a_mailbox_through_a_yaml_alias_are_refused(
    tmp_path: Path,
) -> None:
    """The audit's case: the second channel's `imap` an alias of the first's."""
    channels = (
        "  - {name: mail-a, type: email, address: a@example.com, smtp: {host: s},"
        " imap: &box {host: imap.example.com, username: support, password: p}}\n"
        "  - {name: mail-b, type: email, address: b@example.com, smtp: {host: s}, imap: *box}"
    )
    assert "channels[1].imap" in problem_at(real_channels(tmp_path, channels), "channels[1].imap")
