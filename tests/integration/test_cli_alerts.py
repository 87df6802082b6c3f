"""`campaign alerts` and the new figures of `campaign kpis` against the real pair, the
service checking alerts every half second for deliveries of 5 messages or more: a
delivery with hard bounces (`hard+...@`) and one with a complaint (`complaint@`) alert,
a delivery of 4 does not. Listed as a table, JSON or CSV, by delivery and in pages;
errors as one line; off a terminal nothing is cut."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import time
from typing import Any

import pytest

from tests.conftest import Servers
from tests.integration.test_cli import (
    BOTH_ROLES,
    CliPair,
    create_operator,
    fails,
    row,
    run,
    run_process,
)

HARD_BOUNCES = ["hard+1@example.com", "hard+2@example.com"] + [
    f"ok+{i}@example.com" for i in range(3)
]
COMPLAINTS = ["complaint@other.example"] + [f"ok+{i}@other.example" for i in range(4)]
SMALL = [f"hard+{i}@small.example" for i in range(4)]


@pytest.fixture
def cli_pair(fresh_db_url: str, servers: Servers) -> CliPair:
    """test_cli.py's pair, checking alerts every half second from 5 messages up."""
    pair = servers.pair(
        fresh_db_url,
        ("--retry-interval-ms", "100", "--engagement-delay-ms", "50"),
        ("--alert-interval", "0.5", "--alert-min-messages", "5"),
    )
    token = create_operator(fresh_db_url, "ops", *BOTH_ROLES)
    return CliPair(pair.service.address, pair.stub.address, fresh_db_url, token)


def send(cli_pair: CliPair, label: str, emails: list[str]) -> int:
    recipients = " ".join(f"--recipient {e}" for e in emails)
    created = run(
        *cli_pair.args(
            f"--json deliveries create --label {label} --subject S --body B {recipients}"
        )
    )
    delivery_id: int = json.loads(created.stdout)["delivery"]["id"]
    run(*cli_pair.args(f"deliveries prepare {delivery_id}"))
    run(*cli_pair.args(f"deliveries confirm {delivery_id}"))
    return delivery_id


def listed(cli_pair: CliPair, command: str = "") -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = json.loads(
        run(*cli_pair.args(f"alerts --format json {command}")).stdout
    )["alerts"]
    return alerts


def send_and_wait(cli_pair: CliPair) -> tuple[int, int, int]:
    """The three deliveries, sent; returns once the two alerts are listed and the small
    delivery's bounces are counted."""
    hard = send(cli_pair, "Bounces", HARD_BOUNCES)
    complaint = send(cli_pair, "Complaint", COMPLAINTS)
    small = send(cli_pair, "Small", SMALL)
    deadline = time.monotonic() + 60
    while len(listed(cli_pair)) < 2:
        assert time.monotonic() < deadline, "the alerts were never raised"
        time.sleep(0.2)
    while json.loads(run(*cli_pair.args(f"--json kpis {small}")).stdout)["kpis"]["failed"] < 4:
        assert time.monotonic() < deadline, "the small delivery's bounces were never counted"
        time.sleep(0.2)
    return hard, complaint, small


def test_alerts_list_in_every_format(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    hard, complaint, small = send_and_wait(cli_pair)
    by_delivery = {a["delivery_id"]: a for a in listed(cli_pair)}
    assert set(by_delivery) == {hard, complaint}
    bounce, complained = by_delivery[hard], by_delivery[complaint]
    assert (bounce["criterion"], bounce["threshold"], bounce["stopped"]) == (
        "HARD_BOUNCE_RATIO", 0.05, False,
    )  # fmt: skip
    assert (complained["criterion"], complained["threshold"]) == ("COMPLAINT_RATIO", 0.001)
    assert bounce["raise_time"].endswith("Z") and 0.05 < bounce["value"] <= 1

    # The table: newest first, a ratio as a percentage.
    table = run(*cli("alerts")).stdout
    row(
        table,
        str(hard),
        "hard bounce ratio",
        f"{bounce['value'] * 100:.2f} %",
        "5.00 %",
        "no",
        bounce["message"],
    )
    row(table, str(complaint), "complaint ratio", f"{complained['value'] * 100:.2f} %", "0.10 %")
    header = next(line for line in table.splitlines() if "Criterion" in line)
    assert header.split() == [
        "Raised", "(UTC)", "Delivery", "Criterion", "Value", "Threshold", "Stopped", "Message",
    ]  # fmt: skip
    assert table.splitlines()[-1] == "Last page."
    shown = [int(line.split()[2]) for line in table.splitlines() if "ratio" in line]
    newest_first = sorted(
        by_delivery.values(), key=lambda a: (a["raise_time"], a["delivery_id"]), reverse=True
    )
    assert shown == [a["delivery_id"] for a in newest_first]

    # One delivery's; a delivery without any.
    only = run(*cli(f"alerts --delivery {hard}")).stdout
    assert "hard bounce ratio" in only and "complaint ratio" not in only
    assert run(*cli(f"alerts --delivery {small}")).stdout.splitlines() == [
        f"No alerts for delivery {small}.",
        "Last page.",
    ]

    # JSON: the API's response; --format json and the global --json alike.
    as_json = json.loads(run(*cli("--json alerts")).stdout)
    assert as_json == json.loads(run(*cli("alerts --format json")).stdout)
    assert as_json["next_page_token"] == ""
    assert [a["delivery_id"] for a in as_json["alerts"]] == shown

    # CSV: a header and one row per alert, nothing else on stdout.
    out = run(*cli("alerts --format csv"))
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert out.stdout.splitlines()[0] == (
        "raise_time,delivery_id,criterion,value,threshold,stopped,message"
    )
    assert [int(r["delivery_id"]) for r in rows] == shown
    first = next(r for r in rows if int(r["delivery_id"]) == hard)
    assert (first["criterion"], float(first["value"]), float(first["threshold"])) == (
        "HARD_BOUNCE_RATIO", bounce["value"], 0.05,
    )  # fmt: skip
    assert (first["stopped"], first["message"], first["raise_time"]) == (
        "false", bounce["message"], bounce["raise_time"],
    )  # fmt: skip
    assert out.stderr == ""

    # A limit: the next page's command says how to go on.
    # A full page has a token, though nothing may follow it.
    page = run(*cli(f"alerts --limit 1 --delivery {hard}")).stdout
    match = re.search(r"^More: (campaign alerts .*)$", page, re.MULTILINE)
    assert match and "hard bounce ratio" in page, page
    assert shlex.split(match.group(1))[:6] == [
        "campaign", "alerts", "--delivery", str(hard), "--limit", "1",
    ]  # fmt: skip
    after = run(*cli(shlex.join(shlex.split(match.group(1))[1:]))).stdout
    assert after.splitlines() == ["No more alerts.", "Last page."]
    first_page = run(*cli("alerts --limit 1")).stdout
    match = re.search(r"^More: (campaign alerts .*)$", first_page, re.MULTILINE)
    assert match, first_page
    again = shlex.split(match.group(1))
    assert again[:4] == ["campaign", "alerts", "--limit", "1"]
    second_page = run(*cli(shlex.join(again[1:]))).stdout
    assert str(shown[0]) in first_page.split() and str(shown[1]) in second_page.split()
    assert "ratio" in second_page and str(shown[0]) not in second_page.split()
    limited = run(*cli("alerts --limit 1 --format csv"))
    assert len(limited.stdout.splitlines()) == 2
    assert limited.stderr.startswith("More: campaign alerts --limit 1 --format csv --page-token ")
    every = json.loads(run(*cli("--json alerts --limit 1 --all")).stdout)
    assert len(every["alerts"]) == 2 and every["next_page_token"] == ""

    # Errors: one line each; a usage error for an id that cannot be one.
    fails(*cli("alerts --delivery 999"), expected="error: NOT_FOUND: delivery 999 does not exist")
    fails(
        *cli("alerts --page-token forged"),
        expected="error: INVALID_ARGUMENT: page_token: is not a token this service issued",
    )
    assert "--delivery" in run(*cli("alerts --delivery 0"), code=2).output
    assert "--format" in run(*cli("alerts --format xml"), code=2).output
    profiles = create_operator(cli_pair.database_url, "profiles", "--role", "manage_profiles")
    fails(
        "--address", cli_pair.address, "--token", profiles, "alerts",
        expected="error: PERMISSION_DENIED: operator 'profiles' lacks the role read_deliveries",
    )  # fmt: skip


def test_kpis_show_the_failure_breakdown_and_the_alerts(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    hard, complaint, small = send_and_wait(cli_pair)
    (bounce,) = listed(cli_pair, f"--delivery {hard}")

    kpis = run(*cli(f"kpis {hard}")).stdout
    row(kpis, "Bounces + errors", "2", "40.00 %")
    row(kpis, "hard", "2")
    row(kpis, "soft", "0")
    row(kpis, "Complaints", "0", "0.00 %")
    assert "Failures by reason" in kpis
    row(kpis, "hard", "user unknown", "2")
    assert "Domains" in kpis
    row(kpis, "example.com", "5", "5")
    assert "Alerts" in kpis
    row(kpis, "hard bounce ratio", f"{bounce['value'] * 100:.2f} %", "5.00 %", "no")
    assert bounce["message"] in kpis

    complained = run(*cli(f"kpis {complaint}")).stdout
    row(complained, "Complaints", "1")
    assert "Failures by reason" not in complained  # no failures: no table
    row(complained, "other.example", "5", "5")
    row(complained, "complaint ratio")

    quiet = run(*cli(f"kpis {small}")).stdout
    assert "Alerts: none." in quiet.splitlines()
    row(quiet, "hard", "4")
    row(quiet, "hard", "user unknown", "4")

    # JSON carries every figure, the alerts too.
    data = json.loads(run(*cli(f"--json kpis {hard}")).stdout)["kpis"]
    assert (data["hard_failed"], data["soft_failed"], data["complaints"]) == (2, 0, 0)
    assert data["failures"] == [
        {"failure_type": "HARD", "failure_reason": "USER_UNKNOWN", "messages": 2}
    ]
    assert data["domains"][0]["domain"] == "example.com"
    assert data["alerts"] == [bounce]


def test_off_a_terminal_nothing_is_cut(cli_pair: CliPair) -> None:
    hard, _, _ = send_and_wait(cli_pair)
    (bounce,) = listed(cli_pair, f"--delivery {hard}")
    narrow = {"COLUMNS": "40", "TERM": "dumb"}
    for command in ("alerts", f"kpis {hard}"):
        out = run_process(*cli_pair.args(command), env=narrow)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any(bounce["message"] in line and "hard bounce ratio" in line for line in lines), (
            out.stdout
        )
