"""The soak's arithmetic (bench/soak_report.py): slopes, windows, each delivery's check
and the summary, from samples and figures made up here."""

from __future__ import annotations

from typing import Any

import pytest

from bench import soak_report
from bench.soak_report import Check


def test_the_slope_is_per_hour_by_least_squares() -> None:
    # 2 MB more every 10 minutes: 12 MB an hour, whatever the intercept.
    points = [(600.0 * i, 70 + 2.0 * i) for i in range(7)]
    assert soak_report.slope_per_hour(points) == pytest.approx(12.0)
    # Noise around a flat line: the fit, not the last minus the first.
    noisy = [(0.0, 10.0), (60.0, 12.0), (120.0, 8.0), (180.0, 10.0)]
    assert soak_report.slope_per_hour(noisy) == pytest.approx(-24.0)


def test_the_slope_of_known_values() -> None:
    # x = 0, 1, 2 hours; y = 1, 2, 4: slope = sum(dx dy) / sum(dx^2) = (1 + 3) / 2 = 1.5.
    assert soak_report.slope_per_hour([(0, 1), (3600, 2), (7200, 4)]) == pytest.approx(1.5)


@pytest.mark.parametrize("points", [[], [(0.0, 1.0)], [(5.0, 1.0), (5.0, 2.0)]])
def test_no_slope_without_two_times(points: list[tuple[float, float]]) -> None:
    assert soak_report.slope_per_hour(points) is None


def test_windows_are_ten_minutes_or_a_third() -> None:
    assert soak_report.windows(3600) == 600
    assert soak_report.windows(1800) == 600
    assert soak_report.windows(180) == 60


def sample(t: float, **values: Any) -> dict[str, Any]:
    return {"t": t, **values}


def test_window_means_take_the_first_and_last_windows() -> None:
    samples = [sample(60.0 * i, kpis_p99_ms=float(i)) for i in range(61)]  # an hour
    first, last = soak_report.window_means(samples, "kpis_p99_ms", 3600)
    assert first == pytest.approx(5.0)  # minutes 0..10
    assert last == pytest.approx(55.0)  # minutes 50..60
    # Samples without the figure (the first one: no live delivery yet) are left out.
    samples[0]["kpis_p99_ms"] = None
    first, _ = soak_report.window_means(samples, "kpis_p99_ms", 3600)
    assert first == pytest.approx(5.5)


def figures(n: int = 100) -> dict[str, Any]:
    """A delivery of n that went exactly as the stub says."""
    outcome = {"accepted": n, "duplicates": 3, "delivered": 90, "hard_bounced": 6,
               "soft_bounced": 8, "expired": 4, "opened": 40, "clicked": 12, "in_flight": 0,
               "unacknowledged_events": 0}  # fmt: skip
    kpis = {"to_deliver": n, "sent": n, "delivered": 90, "failed": 10, "pending": 0,
            "opened": 40, "clicked": 12}  # fmt: skip
    history = {"delivered_events": 90, "signal_delivered": 90, "signal_hard": 6,
               "soft_addresses": 8, "soft_changed": 8, "addresses_quarantined": 6}  # fmt: skip
    return {
        "logs": {"total": n, "final": n},
        "outcome": outcome,
        "kpis": kpis,
        "recount": dict(kpis),
        "repaired_counters": 0,
        "final": True,
        "history": history,
    }


def test_an_exact_delivery() -> None:
    check = soak_report.check_delivery(7, 100, **figures())
    assert check.exact and check.lost == 0 and check.double_counted == 0
    assert check.as_json()["exact"] is True


def test_a_lost_report_and_a_counted_twice() -> None:
    f = figures()
    f["kpis"]["delivered"] = 88  # two delivery reports never applied
    f["recount"]["delivered"] = 88
    f["history"]["delivered_events"] = 88
    check = soak_report.check_delivery(7, 100, **f)
    assert not check.exact and check.lost == 2 and check.double_counted == 0
    f = figures()
    f["kpis"]["opened"] = 41  # the live counter one ahead of the recount and the stub
    check = soak_report.check_delivery(7, 100, **f)
    assert check.double_counted == 1 and check.lost == 0
    assert ("KPIs = ComputeStats: opened", 41, 40) in check.mismatches


def test_repaired_counters_or_not_final_is_not_exact() -> None:
    assert not soak_report.check_delivery(7, 100, **(figures() | {"repaired_counters": 1})).exact
    assert not soak_report.check_delivery(7, 100, **(figures() | {"final": False})).exact


def test_the_summary() -> None:
    samples = [
        sample(
            60.0 * i,
            service_rss_mb=70 + 0.1 * i,
            service_fds=30,
            kpis_p99_ms=2.0,
            ingest_per_s=None if i == 0 else 1000.0 - i,
        )
        for i in range(31)
    ]
    good = soak_report.check_delivery(1, 100, **figures())
    f = figures()
    f["logs"]["final"] = 97
    bad = soak_report.check_delivery(2, 100, **f)
    got = soak_report.summarize(samples, [good, bad], 1800)
    assert got["deliveries_completed"] == 2 and got["deliveries_exact"] == 1
    assert got["messages"] == 200 and got["lost"] == 3 and got["double_counted"] == 0
    assert got["not_exact"] == [2]
    rss = got["trends"]["service_rss_mb"]
    assert rss["slope_per_hour"] == pytest.approx(6.0)
    assert rss["first"] == 70 and rss["last"] == pytest.approx(73)
    assert got["trends"]["service_fds"]["slope_per_hour"] == 0
    assert "stub_rss_mb" not in got["trends"]  # not sampled: left out, not zero
    ingest = got["windows"]["ingest_per_s"]
    assert ingest["window_s"] == 600
    assert ingest["first"] == pytest.approx(sum(1000 - i for i in range(1, 11)) / 10)
    assert ingest["last"] == pytest.approx(sum(1000 - i for i in range(20, 31)) / 11)


def test_a_row_lines_up_with_the_header() -> None:
    full = sample(90.0, deliveries_completed=1, service_rss_mb=71.23, stub_rss_mb=55.0,
                  service_fds=31, stub_fds=20, db_connections=6, sending_logs_mb=12.5,
                  feedback_events_mb=30.25, delivery_feed_mb=8.0, database_mb=80.0,
                  kpis_p99_ms=3.456, ingest_per_s=812.4)  # fmt: skip
    line = soak_report.row(full)
    assert len(line) == len(soak_report.header())
    assert line.split()[:3] == ["1.5", "1", "71.2"]
    assert line.split()[-2:] == ["3.46", "812"]
    empty = soak_report.row(sample(0.0))
    assert len(empty) == len(line) and empty.split()[1:] == ["-"] * (len(soak_report.COLUMNS) - 1)


def test_a_check_as_json_names_its_figures() -> None:
    check = Check(1, 10, [("sent", 10, 10)], 0, True, 12.5, {"accepted": 10})
    got = check.as_json()
    assert got["comparisons"] == [("sent", 10, 10)] and got["seconds"] == 12.5
    assert got["lost"] == 0 and got["mismatches"] == []
