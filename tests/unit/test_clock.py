"""The clock seam both servers read wall-clock time through (grpc_common.clock): off by
default, offset by the seconds in a test's file, stepped when the file changes, refused
by a server listening beyond loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from delivery_service import clock as service_clock
from delivery_service.config import Settings as ServiceSettings
from grpc_common import clock
from mta_stub import clock as stub_clock
from mta_stub.config import Settings as StubSettings


@pytest.fixture
def offset_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "offset"
    monkeypatch.setattr(clock, "POLL_SECONDS", 0.0)
    yield path
    clock.follow("")


def test_without_a_file_the_clock_is_the_hosts() -> None:
    clock.follow("")
    assert clock.offset() == 0.0
    assert abs(clock.time() - time.time()) < 0.5
    assert abs(stub_clock.time() - time.time()) < 0.5
    assert abs(service_clock.now().timestamp() - time.time()) < 0.5


def test_the_file_steps_the_wall_clock_of_both_seams(offset_file: Path) -> None:
    offset_file.write_text("600\n")
    clock.follow(str(offset_file))
    assert clock.offset() == 600.0
    assert abs(stub_clock.time() - (time.time() + 600)) < 0.5
    assert abs(service_clock.now().timestamp() - (time.time() + 600)) < 0.5
    offset_file.write_text("-600")
    assert abs(service_clock.now().timestamp() - (time.time() - 600)) < 0.5
    # A check of "not in the future" keeps the latest time read: a backward step does
    # not take it back.
    assert service_clock.latest().timestamp() > time.time() + 590
    offset_file.unlink()
    assert clock.offset() == 0.0 or abs(clock.time() - time.time()) < 0.5


@pytest.mark.parametrize("content", ["soon", "nan", "inf"])
def test_a_bad_offset_is_said_and_the_last_one_kept(
    offset_file: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    offset_file.write_text("30")
    clock.follow(str(offset_file))
    offset_file.write_text(content)
    clock.time()
    assert clock.offset() == 30.0
    assert "not seconds" in caplog.text


@pytest.mark.parametrize(
    ("settings", "given"),
    [
        (
            ServiceSettings,
            {
                "DATABASE_URL": "postgresql://db/x",
                "DELIVERY_HOST": "0.0.0.0",
                "DELIVERY_INSECURE": "1",
            },
        ),
        (StubSettings, {"MTA_HOST": "0.0.0.0", "MTA_INSECURE": "1"}),
    ],
)
def test_a_server_beyond_loopback_refuses_the_offset_file(
    settings: type[ServiceSettings] | type[StubSettings], given: dict[str, str]
) -> None:
    settings.model_validate(given)
    with pytest.raises(pydantic.ValidationError, match="refuses it"):
        settings.model_validate({**given, "CLOCK_OFFSET_FILE": "/tmp/offset"})
