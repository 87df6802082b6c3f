"""Both servers' settings (grpc_common.settings): flags over variables over defaults, the
booleans, and one-line errors with exit code 2, never a traceback. No server starts."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from delivery_service.config import Settings as ServiceSettings
from grpc_common.settings import ServerSettings, is_loopback, setting, target_is_loopback
from mta_stub.config import Settings as StubSettings
from tools.processes import REPO_ROOT, child_env

DATABASE = ["--database-url", "postgresql:///x"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No variable of either server leaks in from the shell running the tests."""
    for settings in (ServiceSettings, StubSettings):
        for variable in settings.variables():
            monkeypatch.delenv(variable, raising=False)
    yield monkeypatch


def one_line_error(
    capsys: pytest.CaptureFixture[str], exit_info: pytest.ExceptionInfo[SystemExit]
) -> str:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_defaults() -> None:
    settings = ServiceSettings.parse(DATABASE)
    assert (settings.host, settings.port, settings.mta_address) == (
        "127.0.0.1",
        50051,
        "127.0.0.1:50052",
    )
    assert settings.stats_interval == dt.timedelta(hours=1)
    assert settings.finalize_grace == dt.timedelta(seconds=10)
    assert (settings.tick, settings.pool_size, settings.grace) == (0.25, 20, 5.0)
    assert (settings.log_level, settings.log_json, settings.metrics_port) == ("INFO", False, 0)


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_PORT", "1234")
    monkeypatch.setenv("DATABASE_URL", "postgresql:///from-env")
    monkeypatch.setenv("STATS_INTERVAL_SECONDS", "7")
    from_env = ServiceSettings.parse([])
    assert (from_env.port, from_env.database_url) == (1234, "postgresql:///from-env")
    assert from_env.stats_interval == dt.timedelta(seconds=7)
    flagged = ServiceSettings.parse(["--port", "4321", "--stats-interval", "1.5", *DATABASE])
    assert (flagged.port, flagged.database_url) == (4321, "postgresql:///x")
    assert flagged.stats_interval == dt.timedelta(seconds=1.5)


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "off", ""])
def test_log_json_off(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_JSON", text)
    assert ServiceSettings.parse(DATABASE).log_json is False
    assert StubSettings.parse([]).log_json is False
    assert StubSettings.parse(["--log-json"]).log_json is True


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "on"])
def test_log_json_on(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_JSON", text)
    assert ServiceSettings.parse(DATABASE).log_json is True
    assert StubSettings.parse([]).log_json is True
    assert StubSettings.parse(["--no-log-json"]).log_json is False


@pytest.mark.parametrize(
    ("settings", "argv", "env", "expected"),
    [
        (ServiceSettings, [], {"DELIVERY_PORT": "abc"}, "DELIVERY_PORT='abc' (flag --port)"),
        (ServiceSettings, ["--port", "70000"], {}, "--port '70000' (env DELIVERY_PORT)"),
        (ServiceSettings, ["--pool-size", "0"], {}, "--pool-size '0' (env DB_POOL_SIZE)"),
        (ServiceSettings, ["--tick", "nan"], {}, "--tick 'nan' (env SCHEDULER_TICK_SECONDS)"),
        (ServiceSettings, ["--log-level", "loud"], {}, "--log-level 'loud' (env LOG_LEVEL)"),
        (
            ServiceSettings,
            [],
            {"STATS_INTERVAL_SECONDS": "0"},
            "STATS_INTERVAL_SECONDS='0' (flag --stats-interval)",
        ),
        (
            ServiceSettings,
            ["--finalize-grace", "soon"],
            {},
            "--finalize-grace 'soon' (env FINALIZE_GRACE_SECONDS): input should be a number",
        ),
        (StubSettings, [], {"MTA_PORT": "-1"}, "MTA_PORT='-1' (flag --port)"),
        (StubSettings, [], {"LOG_JSON": "maybe"}, "LOG_JSON='maybe' (flag --log-json)"),
        (StubSettings, ["--grace", "-1"], {}, "--grace '-1' (env MTA_GRACE_SECONDS)"),
        (
            StubSettings,
            [],
            {"MTA_RETRY_INTERVAL_MS": "0"},
            "MTA_RETRY_INTERVAL_MS='0' (flag --retry-interval-ms)",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_and_the_variable(
    settings: type[ServerSettings],
    argv: list[str],
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        settings.parse([*argv, *DATABASE] if settings is ServiceSettings else argv)
    err = one_line_error(capsys, exit_info)
    assert err.startswith(f"{settings.prog}: error: ")
    assert expected in err


def test_every_problem_is_on_the_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ServiceSettings.parse(["--port", "x", "--tick", "0"])
    err = one_line_error(capsys, exit_info)
    assert "--port 'x'" in err
    assert "--tick '0'" in err
    assert "--database-url or DATABASE_URL is required" in err


@pytest.mark.parametrize("argv", [["--bogus"], ["--port"], ["--database-url", ""]])
def test_a_bad_command_line_is_one_line_too(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ServiceSettings.parse(argv)
    one_line_error(capsys, exit_info)


@pytest.mark.parametrize("settings", [ServiceSettings, StubSettings])
def test_help_lists_every_setting_with_its_variable_and_default(
    settings: type[ServerSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    # Without DATABASE_URL: help does not need the required settings.
    with pytest.raises(SystemExit) as exit_info:
        settings.parse(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, field in settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        assert f"{flag} " in out
        assert f"(env {field.validation_alias}, " in out
    assert "(env LOG_JSON, default off)" in out
    assert "--no-log-json" in out


def test_help_with_a_bad_variable_prints_the_help_then_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELIVERY_PORT", "abc")
    with pytest.raises(SystemExit) as exit_info:
        ServiceSettings.parse(["--help"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "(env DELIVERY_PORT, default 50051)" in " ".join(out.split())
    assert err.splitlines() == [
        "python -m delivery_service: error: DELIVERY_PORT='abc' (flag --port): "
        "input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_setting_needs_its_variable() -> None:
    with pytest.raises(TypeError, match="declare colour with setting"):

        class Bad(StubSettings):
            colour: str = "blue"

    class Good(StubSettings):
        colour: str = setting("blue", env="COLOUR", help="a colour")

    assert Good.parse(["--colour", "red"]).colour == "red"


@pytest.mark.parametrize(
    ("module", "args", "env", "expected"),
    [
        ("delivery_service", ["--port", "abc"], {}, "--port 'abc' (env DELIVERY_PORT)"),
        ("delivery_service", ["--help"], {"DELIVERY_PORT": "abc"}, "DELIVERY_PORT='abc'"),
        ("mta_stub", [], {"MTA_PORT": "-1"}, "MTA_PORT='-1' (flag --port)"),
        ("mta_stub", [], {"MTA_HOST": "0.0.0.0"}, "would serve plaintext beyond this machine"),
    ],
)
def test_the_real_entry_points_exit_2_without_a_traceback(
    module: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    """`python -m ...` as a user runs it: it stops at the settings, before any server."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert expected in result.stderr


# --- the transport: TLS, plaintext beyond loopback, the caps ------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50052", True),
        ("localhost:50052", True),
        ("[::1]:50052", True),
        ("dns:///localhost:50052", True),
        ("ipv4:127.0.0.1:50052", True),
        ("unix:/tmp/mta.sock", True),
        ("mta-stub:50052", False),
        ("10.1.2.3:50052", False),
        ("dns://8.8.8.8/localhost.example.com:50052", False),
        ("[2001:db8::1]:50052", False),
    ],
)
def test_target_is_loopback(target: str, loopback: bool) -> None:
    assert target_is_loopback(target) is loopback


@pytest.mark.parametrize("settings", [ServiceSettings, StubSettings])
def test_plaintext_beyond_loopback_is_refused_in_one_line(
    settings: type[ServerSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--host", "0.0.0.0", *(DATABASE if settings is ServiceSettings else [])]
    with pytest.raises(SystemExit) as exit_info:
        settings.parse(argv)
    err = one_line_error(capsys, exit_info)
    assert "--host (env " in err and "'0.0.0.0' would serve plaintext beyond this machine" in err
    assert "give --tls-cert" in err and "--insecure" in err
    # Asked for, it is allowed; and so is TLS.
    assert settings.parse([*argv, "--insecure"]).insecure is True
    tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"]
    assert settings.parse([*argv, *tls]).tls_cert == "c.pem"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert (env DELIVERY_TLS_CERT) and --tls-key"),
        (["--tls-key", "k.pem"], "--tls-cert (env DELIVERY_TLS_CERT) and --tls-key"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca (env DELIVERY_TLS_CLIENT_CA) needs"),
        (["--max-streams", "11", "--max-concurrent-rpcs", "10"], "must not exceed"),
        (["--max-streams", "0"], "--max-streams '0' (env DELIVERY_MAX_STREAMS)"),
        (["--mta-address", "mta:50052"], "'mta:50052' would be reached in plaintext"),
        (["--mta-client-cert", "c.pem", "--mta-client-key", "k.pem"], "needs --mta-ca"),
        (["--mta-ca", "ca.pem", "--mta-client-cert", "c.pem"], "go together"),
    ],
)
def test_transport_settings_that_do_not_fit_are_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ServiceSettings.parse([*argv, *DATABASE])
    assert expected in one_line_error(capsys, exit_info)


def test_transport_defaults_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    service, stub = ServiceSettings.parse(DATABASE), StubSettings.parse([])
    assert (service.tls_cert, service.insecure, service.mta_ca, service.migrate) == (
        "",
        False,
        "",
        True,
    )
    assert (service.max_concurrent_rpcs, service.max_streams) == (2000, 1200)
    assert (stub.max_concurrent_rpcs, stub.max_streams) == (200, 32)
    monkeypatch.setenv("MTA_TLS_CERT", "stub.pem")
    monkeypatch.setenv("MTA_TLS_KEY", "stub.key")
    monkeypatch.setenv("MTA_TLS_CLIENT_CA", "ca.pem")
    monkeypatch.setenv("DATABASE_MIGRATE", "false")
    # Each server reads its own variables: the stub's TLS is not the service's.
    assert StubSettings.parse([]).tls_client_ca == "ca.pem"
    assert ServiceSettings.parse(DATABASE).tls_cert == ""
    assert ServiceSettings.parse(DATABASE).migrate is False


def test_a_plaintext_link_beyond_loopback_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = ServiceSettings.parse(["--mta-address", "mta-stub:50052", "--insecure", *DATABASE])
    with caplog.at_level(logging.WARNING):
        assert settings.mta_credentials() is None
    assert "the link to the MTA at mta-stub:50052 is PLAINTEXT" in caplog.text


def test_a_missing_tls_file_is_one_error_naming_it() -> None:
    settings = ServiceSettings.parse(["--mta-ca", "/nonexistent/ca.pem", *DATABASE])
    with pytest.raises(OSError, match=r"cannot read /nonexistent/ca\.pem"):
        settings.mta_credentials()
