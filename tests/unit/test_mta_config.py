"""The stub's settings: flags, their environment variables, the defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mta_stub import presets
from mta_stub.config import Settings
from mta_stub.scenarios import MixExtras


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Only what a test sets: nothing leaks in from the shell running the tests."""
    for variable in [*Settings.variables(), "METRICS_PORT"]:
        monkeypatch.delenv(variable, raising=False)
    yield monkeypatch


def test_metrics_and_json_logs_are_off_by_default() -> None:
    settings = Settings.parse([])
    assert settings.metrics_port == 0
    assert settings.log_json is False


def test_from_the_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTA_METRICS_PORT", "9101")
    monkeypatch.setenv("LOG_JSON", "1")
    settings = Settings.parse([])
    assert (settings.metrics_port, settings.log_json) == (9101, True)
    flagged = Settings.parse(["--metrics-port", "9200", "--log-json"])
    assert (flagged.metrics_port, flagged.log_json) == (9200, True)
    monkeypatch.setenv("LOG_JSON", "0")
    assert Settings.parse([]).log_json is False


def test_the_delivery_services_metrics_port_is_not_the_stubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METRICS_PORT", "9100")
    assert Settings.parse([]).metrics_port == 0


@pytest.mark.parametrize("bad", ["-1", "65536", "nine"])
def test_a_bad_metrics_port_is_refused(
    bad: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MTA_METRICS_PORT", bad)
    with pytest.raises(SystemExit) as exit_info:
        Settings.parse([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"MTA_METRICS_PORT={bad!r} (flag --metrics-port)" in err
    assert len(err.splitlines()) == 1


def test_the_test_controls_are_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.parse([]).test_controls is False
    assert Settings.parse(["--test-controls"]).test_controls is True
    monkeypatch.setenv("MTA_TEST_CONTROLS", "true")
    assert Settings.parse([]).test_controls is True
    assert Settings.parse(["--no-test-controls"]).test_controls is False


def test_mix_extras_are_none_by_default_and_a_json_object_when_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings.parse([]).mix_extras == ""
    given = '{"complaint_rate": 0.001}'
    assert Settings.parse(["--mix-extras", given]).mix_extras == given
    monkeypatch.setenv("MTA_MIX_EXTRAS", given)
    assert Settings.parse([]).mix_extras == given
    # The seeded mix's, as the preset gives them to a stub it starts.
    flag, value = presets.stub_args()
    assert MixExtras.from_json(Settings.parse([flag, value]).mix_extras) == MixExtras(
        complaint_rate=0.001, late_hard_bounce_rate=0.002, late_hard_bounce_max_ms=300
    )


def test_bad_mix_extras_are_refused_naming_the_flag_and_the_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        Settings.parse(["--mix-extras", '{"complaint_rate": 2}'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--mix-extras '{\"complaint_rate\": 2}' (env MTA_MIX_EXTRAS): " in err
    assert "mix.complaint_rate: must be between 0 and 1" in err
    assert len(err.splitlines()) == 1


def test_retention_is_a_week_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.parse([]).retention_seconds == 7 * 24 * 3600
    assert Settings.parse(["--retention-seconds", "1"]).retention_seconds == 1
    monkeypatch.setenv("MTA_RETENTION_SECONDS", "3600")
    assert Settings.parse([]).retention_seconds == 3600
