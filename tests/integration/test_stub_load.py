"""`python -m mta_stub.load` with a small N: straight to a stub, and through a pair."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from mta_stub import load
from mta_stub.pytest_plugin import MtaStub, Pair


def run_load(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "mta_stub.load", "--json", "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_straight_to_a_stub_at_a_rate(mta_stub: MtaStub) -> None:
    code, report = run_load(
        "--stub", mta_stub.address, "--messages", "600", "--rate", "2000", "--batch", "100"
    )
    assert code == 0, report
    assert report["complete"]
    assert sum(report["final_fates"].values()) == 600
    # The seeded mix without expiry: a few hard bounces, the rest delivered.
    assert set(report["final_fates"]) == {"DELIVERED", "HARD_BOUNCE"}
    # Paced: 600 messages at 2,000/s take about 0.3 s, never much less.
    assert report["duration_s"] >= 0.25
    assert 0 < report["rate_achieved"] <= 2400
    assert report["events"] >= 600
    assert set(report["event_lag_s"]) == {"p50", "p90", "p99", "max"}
    # Its scenario was the run's own, and is cleared.
    (delivery,) = report["deliveries"]
    assert not mta_stub.controls.clear_scenario(delivery_id=delivery)
    outcomes = mta_stub.controls.outcomes(delivery_id=delivery)
    assert (outcomes.accepted, outcomes.in_flight) == (600, 0)


def test_through_a_pair(mta_stub_pair: Pair) -> None:
    code, report = run_load(
        "--pair", mta_stub_pair.service.address,
        "--stub", mta_stub_pair.stub.address,
        f"--token={mta_stub_pair.token}",  # a token may begin with "-"
        "--messages", "300", "--batch", "100", "--rate", "1000",
        "--mix", '{"hard_bounce_rate": 0.5, "seed": 5}',
    )  # fmt: skip
    assert code == 0, report
    assert report["complete"] and len(report["deliveries"]) == 3
    fates = report["final_fates"]
    assert fates["DELIVERED"] + fates["HARD_BOUNCE"] == 300
    assert 0 < fates["HARD_BOUNCE"] < 300
    assert set(report["final_lag_s"]) == {"p50", "p90", "p99", "max"}
    assert report["final_lag_s"]["max"] >= report["relayed_lag_s"]["p50"]


@pytest.mark.parametrize("text", ["hard", '{"hard_bounce_rate": "x"}'])
def test_a_bad_mix_is_refused_with_the_choices(text: str) -> None:
    with pytest.raises(SystemExit) as exited:
        load.main(["--messages", "1", "--mix", text])
    assert exited.value.code == 2


def test_spread() -> None:
    assert load.spread([]) == {}
    values = [float(i) for i in range(1, 101)]
    assert load.spread(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
