"""`gateway check` and `gateway route` as users run them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from tests.store.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(ROOT / "config.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "site: type webchat" in out and "support: manual" in out
    assert "routing[0]: always -> support" in out
    assert err == ""  # no warning either


def test_check_warns_of_a_queue_no_agent_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Routing audit: a queue nobody serves passed `check` in silence; what is routed there
    waits until the web chat gives up, and for good on WhatsApp and email."""
    path = write(
        tmp_path,
        """
        channels: [{name: site, type: webchat}]
        queues: [{name: support}, {name: orphan, distribution: automatic}]
        routing:
          - {if: {text: "(?i)orphan"}, queue: orphan}
          - {queue: support}
        agents:
          - {id: ana, token_sha256: "%s", queues: [support]}
        """
        % ("0" * 64),
    )
    assert main(["check", "--config", path]) == 0  # valid: a warning, not an error
    _, err = capsys.readouterr()
    assert (
        err == f"{path}: warning: queues: 'orphan' has no agent: nobody can take what waits there\n"
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


BAD_CONFIGS = {
    "unknown key": ("queues: [{name: support, distrib: manual}]", "queues[0].distrib"),
    "wrong type": ("server: {port: eighty}", "server.port"),
    "duplicate channel": (
        "channels: [{name: a, type: webchat}, {name: a, type: webchat}]\nqueues: [{name: q}]",
        "channels[1].name",
    ),
    "unknown queue in route": (
        "queues: [{name: support}]\nrouting: [{queue: salez}]",
        "routing[0].queue",
    ),
    "unknown queue for agent": (
        "queues: [{name: support}]\nagents: [{id: a, token_sha256: '"
        + "0" * 64
        + "', queues: [nope]}]",
        "agents[0].queues",
    ),
    "missing variable": (
        "channels: [{name: w, type: whatsapp, provider: cloud_api, phone_number_id: '1',"
        " access_token: '${NOPE_TOKEN}', app_secret: s, verify_token: v}]\nqueues: [{name: q}]",
        "NOPE_TOKEN",
    ),
    "bad duration": ("presence: {agent_disconnect_grace: soon}", "presence.agent_disconnect_grace"),
    # Zero where it cannot mean anything, in each real plugin's own config model.
    "zero web chat token lifetime": (
        "channels: [{name: s, type: webchat, token_ttl: 0s}]\nqueues: [{name: q}]",
        "channels[0].token_ttl: must be longer than 0s",
    ),
    "zero web chat no-agent timeout": (
        "channels: [{name: s, type: webchat, no_agent_timeout: 0s}]\nqueues: [{name: q}]",
        "channels[0].no_agent_timeout: must be longer than 0s; null turns this timer off",
    ),
    "zero provider timeout": (
        "channels: [{name: w, type: whatsapp, provider: cloud_api, phone_number_id: '1',"
        " access_token: a, app_secret: s, verify_token: v, request_timeout: 0s}]"
        "\nqueues: [{name: q}]",
        "channels[0].request_timeout: must be longer than 0s",
    ),
    # Settings that loaded but could not work (config audit).
    "web chat origin without a scheme": (
        "channels: [{name: s, type: webchat, allowed_origins: [shop.example.com]}]"
        "\nqueues: [{name: q}]",
        "channels[0].allowed_origins[0]: an origin starts with its scheme",
    ),
    "web chat origin with a path": (
        "channels: [{name: s, type: webchat, allowed_origins: ['https://shop.example.com/path']}]"
        "\nqueues: [{name: q}]",
        "channels[0].allowed_origins[0]: an origin has no path",
    ),
    "short web chat secret": (
        "channels: [{name: s, type: webchat, secret: short-secret}]\nqueues: [{name: q}]",
        "channels[0].secret: a signing secret needs at least 32 characters",
    ),
    "zero rate": (
        "channels: [{name: s, type: webchat, message_rate_limit: 0/minute}]\nqueues: [{name: q}]",
        "channels[0].message_rate_limit: a rate of 0 would refuse every request",
    ),
    "agent listing a queue twice": (
        "queues: [{name: q}, {name: r}]\nagents: [{id: a, token_sha256: '"
        + "0" * 64
        + "', queues: [q, r, q]}]",
        "agents[0].queues[2]: queue 'q' is listed twice (see agents[0].queues[0])",
    ),
    "strategy on a manual queue": (
        "queues: [{name: q, distribution: manual, strategy: round_robin}]",
        "queues[0].strategy: a strategy only applies to distribution: automatic",
    ),
    "two twilio channels from one number": (
        "channels:\n"
        "  - {name: a, type: whatsapp, provider: twilio, auth_token: t,"
        " account_sid: AC00000000000000000000000000000000, from: '+14155238886'}\n"
        "  - {name: b, type: whatsapp, provider: twilio, auth_token: t,"
        " account_sid: AC00000000000000000000000000000000, from: '+14155238886'}\n"
        "queues: [{name: q}]",
        "channels[1].from: 'whatsapp:+14155238886' is already the from of channels[0]",
    ),
    "two email channels on one mailbox": (
        "channels:\n"
        "  - {name: a, type: email, address: a@example.com, smtp: {host: s},"
        " imap: {host: imap.example.com, username: u, password: p}}\n"
        "  - {name: b, type: email, address: b@example.com, smtp: {host: s},"
        " imap: {host: imap.example.com, username: u, password: p}}\n"
        "queues: [{name: q}]",
        "channels[1].imap: 'imap://u@imap.example.com/INBOX' is already the imap of channels[0]",
    ),
    "zero mail poll interval": (
        "channels: [{name: m, type: email, address: s@example.com,"
        " imap: {host: h, username: u, password: p, poll_interval: 0s},"
        " smtp: {host: h}}]\nqueues: [{name: q}]",
        "channels[0].imap.poll_interval: must be longer than 0s",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs_are_refused_naming_file_and_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, key = BAD_CONFIGS[case]
    path = write(tmp_path, text)
    assert main(["check", "--config", path]) == 1
    err = capsys.readouterr().err
    assert path in err or "config.yaml" in err
    assert key in err


def test_errors_are_not_tracebacks_and_hide_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        channels:
          - {name: w, type: whatsapp, provider: twilio,
             account_sid: AC00000000000000000000000000000000,
             auth_token: "${TW_TOKEN}", from: "whatsapp:+14155238886", app_secret: "${TW_TOKEN}"}
        queues: [{name: q}]
        """,
    )
    env = {"TW_TOKEN": "tw-very-secret-token", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "--config", path],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "tw-very-secret-token" not in result.stdout + result.stderr
    assert "channels[0]" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_route_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """
        channels: [{name: site, type: webchat}]
        queues: [{name: sales}, {name: support}]
        routing:
          - {if: {channel: site, text: "(?i)precio|price"}, queue: sales}
          - {if: {from: "+55*"}, queue: sales}
          - {queue: support}
        """,
    )
    assert main(["route", "--config", path, "--channel", "site", "--text", "Qual o PRECIO?"]) == 0
    out = capsys.readouterr().out
    assert "routing[0]" in out and "queue:   sales" in out
    assert main(["route", "--config", path, "--channel", "site", "--from", "+5511999"]) == 0
    assert "routing[1]" in capsys.readouterr().out
    assert main(["route", "--config", path, "--channel", "site", "--text", "hi"]) == 0
    out = capsys.readouterr().out
    assert "routing[2]" in out and "queue:   support" in out
    assert "rule:    routing[2] matched" in out and "routing[2]: routing[2]" not in out
    # A channel the (valid) config lacks is a usage error, not an invalid configuration.
    assert main(["route", "--config", path, "--channel", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no channel named 'nope' (known: site)" in err and "invalid configuration" not in err


@pytest.mark.parametrize(
    ("channel", "written", "stored"),
    [
        ("wa", "whatsapp:+5511999990000", "+5511999990000"),  # Twilio's From
        ("wa", "5511999990000", "+5511999990000"),  # Meta's wa_id
        ("wa", "whatsapp:+55 (11) 99999-0000", "+5511999990000"),  # as people write it
        ("mail", "Ana <Ana@BigCorp.com>", "ana@bigcorp.com"),
    ],
)
def test_route_takes_from_to_the_form_the_channel_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], channel: str, written: str, stored: str
) -> None:
    """Ops audit: `--from whatsapp:+55...` (Twilio's form) or Meta's `55...` fell to the
    default rule while the live server, which stores `+55...`, routed the same customer to
    sales; the dry run now takes the address as the channel stores it, and says so."""
    path = write(
        tmp_path,
        """
        channels:
          - {name: wa, type: whatsapp, provider: cloud_api, phone_number_id: '1',
             access_token: a, app_secret: s, verify_token: v}
          - {name: mail, type: email, address: s@example.com,
             imap: {host: h, username: u, password: p}, smtp: {host: h}}
        queues: [{name: sales}, {name: support}]
        routing:
          - {if: {from: "+55*"}, queue: sales}
          - {if: {from: "*@bigcorp.com"}, queue: sales}
          - {queue: support}
        """,
    )
    assert main(["route", "--config", path, "--channel", channel, "--from", written]) == 0
    out = capsys.readouterr().out
    assert "queue:   sales" in out
    assert f"from:    {stored} (how the channel stores {written!r})" in out
    # Written as stored already: nothing to say.
    assert main(["route", "--config", path, "--channel", channel, "--from", stored]) == 0
    assert "from:" not in capsys.readouterr().out


def test_empty_channels_is_valid(tmp_path: Path) -> None:
    assert main(["check", "--config", write(tmp_path, "channels: []\nqueues: [{name: q}]\n")]) == 0


def test_check_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`gateway check --config big.yaml | head` ended in a BrokenPipeError traceback."""
    agents = "\n".join(
        f'  - {{id: agent{i}, token_sha256: "{i:064x}", queues: [q]}}' for i in range(1500)
    )
    path = write(tmp_path, "channels: [{name: site, type: webchat}]\nqueues: [{name: q}]\n")
    Path(path).write_text(Path(path).read_text() + "agents:\n" + agents + "\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "check", "--config", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(100)  # head: a line or two, then it goes away
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert "Traceback" not in errors and "BrokenPipe" not in errors


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `gateway ARGS` as a user does, in `cwd` (where a relative SQLite path would land),
    with `env` for the config's variables."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**(env or {}), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    )


def port_option(command: str) -> list[str]:
    """A free port for `serve` (should it start after all, it must not take 8080)."""
    return ["--port", str(free_port())] if command == "serve" else []


def assert_refused(result: subprocess.CompletedProcess[str], *lines: str) -> None:
    """Exit 1, no traceback, nothing claiming to serve, and exactly these problem lines."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "serving on" not in output, output
    assert result.stderr.splitlines() == ["gateway: invalid configuration:", *lines], output


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("section", ["server: [1, 2]", "store: [a]"])
def test_a_mapping_section_written_as_a_list_is_refused_cleanly(
    tmp_path: Path, command: str, section: str
) -> None:
    """Config audit: these ended both commands with an IndexError traceback."""
    path = write(tmp_path, f"{section}\nqueues: [{{name: q}}]\n")
    name = section.split(":")[0]
    assert_refused(
        run_cli(command, "--config", path, cwd=tmp_path),
        f"{path}: {name}: expected a mapping of settings (key: value), not a list",
    )


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("text", ["", "# to do\n", "\n   \n"])
def test_an_empty_config_is_refused(tmp_path: Path, command: str, text: str) -> None:
    """Config audit: an empty file was valid and `serve` ran on the defaults, creating
    var/gateway.db in whatever directory it was started from."""
    path = write(tmp_path, text)
    assert_refused(
        run_cli(command, "--config", path, *port_option(command), cwd=tmp_path),
        f"{path}: the file is empty: expected config.yaml's sections, at least one queue"
        " (queues: [{name: support}])",
    )
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_config_without_a_queue_is_refused(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, "server: {host: 127.0.0.1}\nchannels: []\n")
    assert_refused(
        run_cli(command, "--config", path, *port_option(command), cwd=tmp_path),
        f"{path}: queues: at least one queue is required: every conversation is routed to one",
    )
    assert not (tmp_path / "var").exists()


def test_a_duration_from_a_variable_holding_seconds_is_read(tmp_path: Path) -> None:
    """Config audit: `agent_disconnect_grace: ${GRACE}` with GRACE=30 was refused (a variable
    expands to text, and only a number was read as seconds)."""
    path = write(tmp_path, "presence: {agent_disconnect_grace: ${GRACE}}\nqueues: [{name: q}]\n")
    result = run_cli("check", "--config", path, cwd=tmp_path, env={"GRACE": "90"})
    assert result.returncode == 0, result.stderr
    assert "presence: agent_disconnect_grace 1m30s" in result.stdout


def test_a_redis_url_naming_no_database_number_is_refused(tmp_path: Path) -> None:
    """Config audit: `check` called `redis://...:6379/abc` valid, and serve used database 0."""
    path = write(
        tmp_path, 'store: {url: "redis://:${REDIS_PW}@127.0.0.1:6379/abc"}\nqueues: [{name: q}]\n'
    )
    result = run_cli("check", "--config", path, cwd=tmp_path, env={"REDIS_PW": "pw-redis-secret"})
    assert_refused(
        result,
        f"{path}: store.url: the URL's path is the database number: / or /<number>, such as /0",
    )
    assert "pw-redis-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--port", "70000", "input should be less than or equal to 65535"),
        ("--port", "0", "input should be greater than or equal to 1"),
        ("--port", "-1", "input should be greater than or equal to 1"),
        ("--port", "http", "input should be a valid integer, unable to parse string as an integer"),
        ("--host", "", "string should have at least 1 character"),
    ],
)
def test_serve_overrides_are_validated_as_the_config_is(
    tmp_path: Path, option: str, value: str, problem: str
) -> None:
    """Config audit: `serve --port 70000` served though `server.port: 70000` is refused,
    `--port 0` was ignored and `--port -1` failed obscurely. An override is validated by the
    config's own rules and refused in the same words, exit 1."""
    field = option.removeprefix("--")
    path = write(tmp_path, f'server: {{{field}: "{value}"}}\nqueues: [{{name: q}}]\n')
    assert_refused(
        run_cli("check", "--config", path, cwd=tmp_path), f"{path}: server.{field}: {problem}"
    )
    path = write(tmp_path, "queues: [{name: q}]\n")
    assert_refused(
        run_cli("serve", "--config", path, f"{option}={value}", cwd=tmp_path, timeout=30),
        f"{option}: server.{field}: {problem}",
    )


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """Config audit: nine nested anchors of nine aliases each kept `gateway check` busy for
    minutes, growing past 476 MB."""
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [
        f"&{key} [{', '.join([f'*{previous}'] * 9)}]"
        for previous, key in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    path = write(
        tmp_path,
        "\n".join(f"{key}: {level}" for key, level in zip("abcdefghi", levels, strict=True)),
    )
    assert_refused(
        run_cli("check", "--config", path, cwd=tmp_path, timeout=20),
        f"{path}: the config expands to more than 200,000 values (YAML aliases?)",
    )


def test_a_malformed_environment_reference_is_refused(tmp_path: Path) -> None:
    """Config audit: an unclosed `"${WA_TOKEN"` was taken literally, as the token."""
    path = write(
        tmp_path,
        """
        channels:
          - {name: w, type: whatsapp, provider: cloud_api, phone_number_id: '1',
             access_token: "${WA_TOKEN", app_secret: "${WA_SECRET}", verify_token: v}
        queues: [{name: q}]
        """,
    )
    env = {"WA_TOKEN": "wa-token-secret-value", "WA_SECRET": "wa-app-secret-value"}
    result = run_cli("check", "--config", path, cwd=tmp_path, env=env)
    assert_refused(
        result,
        f"{path}: channels[0].access_token: an environment reference must be ${{NAME}} (letters,"
        " digits and _, not starting with a digit), closed by }; write $${ for a literal ${",
    )
    assert "secret-value" not in result.stdout + result.stderr
