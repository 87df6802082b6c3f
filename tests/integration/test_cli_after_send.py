"""The CLI after the send (issue 13 item 5): what is live, figures refreshed on demand,
`--format csv|json|table`, and nothing cut off a terminal, against the real pair."""

from __future__ import annotations

import csv
import io
import time

from typer.testing import CliRunner

from campaign_cli.app import app
from tests.integration.test_cli import ENV, CliPair, cli_pair, row, run, run_json

__all__ = ["cli_pair"]  # the fixture, used by name

LONG = "a-recipient-with-a-rather-long-local-part-0123456789@example.com"


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_after_the_send(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    created = run_json(
        *cli(
            "deliveries create --label Live --subject Hi --body '<p>Hi</p>' "
            f"--recipient open@example.com --recipient hard@example.com --recipient {LONG} "
            "--validity 1m"
        )
    )
    delivery = created["delivery"]["id"]
    run(*cli(f"deliveries prepare {delivery}"))
    run(*cli(f"deliveries confirm {delivery}"))

    # Live while relayed (SENDING) and after (SENT, until the validity ends).
    deadline = time.monotonic() + 15
    while run_json(*cli(f"deliveries get {delivery}"))["delivery"]["state"] != "SENT":
        assert time.monotonic() < deadline, "not SENT within 15 s"
        time.sleep(0.1)
    assert run_json(*cli("deliveries list --state sending"))["deliveries"] == []
    live = run_json(*cli("deliveries list --live"))["deliveries"]
    assert [d["id"] for d in live] == [delivery]
    row(run(*cli("deliveries list --live")).stdout, str(delivery), "Live", "SENT")
    assert "--live" in run(*cli("deliveries list --live --state sent"), code=2).output

    # Open % on demand: the open is counted by the refresh, long before the hourly round.
    deadline = time.monotonic() + 15
    while True:
        refreshed = run_json(*cli(f"kpis {delivery} --refresh"))["kpis"]
        if refreshed["opened"] == 1:
            break
        assert time.monotonic() < deadline, f"no open counted within 15 s: {refreshed}"
        time.sleep(0.2)
    assert refreshed["open_percent"] > 0 and refreshed["final"] is False
    shown = run(*cli(f"kpis {delivery} --refresh")).stdout
    assert f"KPIs of delivery {delivery}, recomputed" in shown
    assert "Repaired counters: 0" in shown

    # Off a terminal, at 80 columns: every cell whole.
    narrow = CliRunner(env={**ENV, "COLUMNS": "80"})
    logs = narrow.invoke(app, cli(f"logs {delivery}"), prog_name="campaign")
    assert logs.exit_code == 0, logs.output
    assert LONG in logs.stdout
    row(logs.stdout, "hard@example.com", "FAILED", "hard: user unknown")

    # CSV: a header of the JSON's fields, a row per log; one row for what get shows.
    listed = rows(run(*cli(f"logs {delivery} --format csv")).stdout)
    assert [r["email"] for r in listed] == ["open@example.com", "hard@example.com", LONG]
    failed = listed[1]
    assert (failed["status"], failed["failure_type"], failed["failure_reason"]) == (
        "FAILED",
        "HARD",
        "USER_UNKNOWN",
    )
    assert listed[0]["opened"] == "true" and listed[0]["relay_time"].endswith("Z")
    (got,) = rows(run(*cli(f"deliveries get {delivery} --format csv")).stdout)
    assert (got["id"], got["label"], got["content.subject"]) == (str(delivery), "Live", "Hi")
    assert got["state"] == "SENT" and got["validity_period"] == "60.0"
    (figures,) = rows(run(*cli(f"kpis {delivery} --format csv")).stdout)
    assert figures["kpis.to_deliver"] == "3" and figures["kpis.final"] == "false"
    (deliveries,) = rows(run(*cli("deliveries list --live --format csv")).stdout)
    assert deliveries["id"] == str(delivery)
    # --format json is --json; --format table wins over the global --json.
    assert run_json(*cli(f"kpis {delivery}"))["kpis"]["to_deliver"] == 3
    as_json = run(*cli(f"kpis {delivery} --format json")).stdout
    assert as_json.startswith('{"kpis": {')
    table = run("--json", *cli(f"deliveries get {delivery} --format table")).stdout
    row(table, "Label", "Live")
