"""`campaign alerts` and the KPI table's own parts, without a service: every criterion has
its unit, a CSV row has every column, the next page's command repeats the options, and
the KPI table shows the failure breakdown, the domains and the alerts."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from delivery.v1 import delivery_service_pb2 as pb
from rich.console import Console

from campaign_cli import alerts, render
from campaign_cli.render import Format


def rendered(*items: object) -> str:
    out = io.StringIO()
    console = Console(file=out, width=400, markup=False, emoji=False, highlight=False)
    for item in items:
        console.print(item)
    return out.getvalue()


def alert(criterion: pb.AlertCriterion.ValueType, value: float, threshold: float) -> pb.Alert:
    a = pb.Alert(
        delivery_id=7,
        criterion=criterion,
        value=value,
        threshold=threshold,
        message="what was crossed, in words",
    )
    a.raise_time.FromSeconds(86_400 + 61)
    return a


@pytest.mark.parametrize(
    ("criterion", "value", "shown"),
    [
        (pb.ALERT_CRITERION_HARD_BOUNCE_RATIO, 0.4, "40.00 %"),
        (pb.ALERT_CRITERION_SOFT_BOUNCE_RATIO, 0.05, "5.00 %"),
        (pb.ALERT_CRITERION_COMPLAINT_RATIO, 0.001, "0.10 %"),
        (pb.ALERT_CRITERION_NOTHING_RELAYED, 1234.4, "1,234 s"),
        (pb.ALERT_CRITERION_LOW_THROUGHPUT, 999.6, "1,000 /h"),
        (99, 0.5, "0.5"),  # a criterion newer than this CLI: the bare number
    ],
)
def test_each_criterion_is_shown_in_its_unit(
    criterion: pb.AlertCriterion.ValueType, value: float, shown: str
) -> None:
    assert render.measure(criterion, value) == shown


def test_every_criterion_has_a_unit_and_words() -> None:
    for name, number in pb.AlertCriterion.items():
        if number == pb.ALERT_CRITERION_UNSPECIFIED:
            continue
        # A ratio, seconds or messages per hour: never the bare fallback.
        assert render.measure(number, 0.5) != "0.5", name
        words = name.removeprefix("ALERT_CRITERION_").lower().replace("_", " ")
        assert render.criterion(number) == words


def test_a_csv_row_has_every_column() -> None:
    a = alert(pb.ALERT_CRITERION_COMPLAINT_RATIO, 0.25, 0.001)
    a.stopped = False
    assert dict(zip(alerts.CSV_COLUMNS, alerts.csv_row(a), strict=True)) == {
        "raise_time": "1970-01-02T00:01:01Z",
        "delivery_id": 7,
        "criterion": "COMPLAINT_RATIO",
        "value": 0.25,
        "threshold": 0.001,
        "stopped": "false",
        "message": "what was crossed, in words",
    }
    a.stopped = True
    a.ClearField("raise_time")
    row = dict(zip(alerts.CSV_COLUMNS, alerts.csv_row(a), strict=True))
    assert (row["stopped"], row["raise_time"]) == ("true", "")


def test_the_next_page_command_repeats_the_options_given() -> None:
    assert alerts.again(None, alerts.DEFAULT_LIMIT, None) == "campaign alerts"
    assert alerts.again(3, 10, Format.CSV) == "campaign alerts --delivery 3 --limit 10 --format csv"


def test_the_alerts_table() -> None:
    hard = alert(pb.ALERT_CRITERION_HARD_BOUNCE_RATIO, 0.3, 0.05)
    hard.stopped = True
    text = rendered(render.alerts_table([hard], with_delivery=True))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "Raised (UTC) Delivery Criterion Value Threshold Stopped Message" in lines
    assert (
        "1970-01-02 00:01:01 7 hard bounce ratio 30.00 % 5.00 % yes what was crossed, in words"
    ) in lines
    assert "Delivery" not in rendered(render.alerts_table([hard]))


def test_the_kpi_table_shows_failures_domains_and_alerts() -> None:
    k = pb.Kpis(
        to_deliver=10,
        sent=10,
        delivered=6,
        failed=4,
        hard_failed=3,
        soft_failed=1,
        complaints=2,
        complaint_percent=33.33,
        failures=[
            pb.FailureCount(
                failure_type=pb.FAILURE_TYPE_HARD,
                failure_reason=pb.FAILURE_REASON_USER_UNKNOWN,
                messages=3,
            ),
            pb.FailureCount(
                failure_type=pb.FAILURE_TYPE_SOFT,
                failure_reason=pb.FAILURE_REASON_MAILBOX_FULL,
                messages=1,
            ),
        ],
        domains=[
            pb.DomainKpis(domain="gmail.com", to_deliver=8, sent=8, delivered=5, failed=3),
            pb.DomainKpis(domain="", to_deliver=2, sent=2, delivered=1, failed=1, complaints=2),
        ],
        alerts=[alert(pb.ALERT_CRITERION_COMPLAINT_RATIO, 0.3333, 0.001)],
    )
    lines = [" ".join(line.split()) for line in rendered(render.kpi_table(k, "KPIs")).splitlines()]
    for expected in (
        "hard 3",
        "soft 1",
        "Complaints 2 33.33 %",
        "Failures by reason",
        "hard user unknown 3",
        "soft mailbox full 1",
        "Domains",
        "gmail.com 8 8 5 3 0 0 0",
        "(other domains) 2 2 1 1 0 0 2",
        "Alerts",
        "1970-01-02 00:01:01 complaint ratio 33.33 % 0.10 % no what was crossed, in words",
    ):
        assert expected in lines, (expected, lines)
    # Nothing to show: no empty tables, and the alerts say none.
    quiet = rendered(render.kpi_table(pb.Kpis(to_deliver=1), "KPIs"))
    assert "Failures by reason" not in quiet and "Domains" not in quiet
    assert "Alerts: none." in quiet.splitlines()


def test_the_watch_line_counts_the_alerts() -> None:
    view = render.WatchView(Console(file=io.StringIO()), pb.Delivery(id=1, to_deliver=5))
    update = pb.WatchDeploymentResponse(state=pb.STATE_SENDING, to_deliver=5, sent=5)
    view.update(update)
    assert "alert" not in view._status.counters
    update.kpis.alerts.append(alert(pb.ALERT_CRITERION_HARD_BOUNCE_RATIO, 0.4, 0.05))
    view.update(update)
    assert view._status.counters.endswith(" · 1 alert")


def test_the_watch_says_when_the_figures_become_final() -> None:
    """The countdown to the end of the validity period (when the figures become final),
    then that it is over; the KPI table says whether they are final, and why not."""
    line = render._StatusLine(
        dt.datetime.now(dt.UTC) + dt.timedelta(hours=1, minutes=2, seconds=30)
    )
    line.counters = "delivered 3"
    shown = rendered(line)
    assert shown.startswith("delivered 3 · validity ends in 1:02:"), shown
    line.end = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert rendered(line).strip() == "delivered 3 · validity over, finishing"
    line.over = True
    assert rendered(line).strip() == "delivered 3"

    def final_row(k: pb.Kpis) -> str:
        lines = [" ".join(x.split()) for x in rendered(render.kpi_table(k, "KPIs")).splitlines()]
        return next(x for x in lines if x.startswith("Final"))

    assert final_row(pb.Kpis(to_deliver=1)) == "Final no: the validity period is not over"
    assert final_row(pb.Kpis(to_deliver=1, final=True)) == "Final yes"
