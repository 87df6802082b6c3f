"""The stub's observability settings: flags, their environment variables, the defaults."""

from __future__ import annotations

import pytest

from mta_stub.config import parse_settings


def test_metrics_and_json_logs_are_off_by_default() -> None:
    settings = parse_settings([], {})
    assert settings.metrics_port == 0
    assert settings.log_json is False


def test_from_the_environment_and_flags() -> None:
    env = {"MTA_METRICS_PORT": "9101", "LOG_JSON": "1"}
    settings = parse_settings([], env)
    assert (settings.metrics_port, settings.log_json) == (9101, True)
    # The delivery service's METRICS_PORT is its own: the stub does not read it.
    assert parse_settings([], {"METRICS_PORT": "9100"}).metrics_port == 0
    assert parse_settings([], {"LOG_JSON": "0"}).log_json is False
    flagged = parse_settings(["--metrics-port", "9200", "--log-json"], env)
    assert (flagged.metrics_port, flagged.log_json) == (9200, True)


@pytest.mark.parametrize("bad", ["-1", "65536", "nine"])
def test_a_bad_metrics_port_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([], {"MTA_METRICS_PORT": bad})
    assert "--metrics-port" in capsys.readouterr().err
