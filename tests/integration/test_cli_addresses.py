"""`campaign addresses ...` against the real pair: entries the stub's feedback made
(`hard+...@` bounces with 550 5.1.1, `complaint@` complains), listed as a table, JSON or
CSV with each filter and in pages; shown; released, quarantined and denylisted by hand;
released in bulk after a dry run; errors as one line."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import time

from tests.integration.test_cli import (
    CliPair,
    cli_pair,
    create_operator,
    fails,
    row,
    run,
    run_process,
)

__all__ = ["cli_pair"]  # the fixture, shared with test_cli.py

OUTAGE = ["hard+1@outage.example", "hard+2@outage.example"]
BOUNCED = [*OUTAGE, "complaint@other.example"]


def send_and_wait(cli_pair: CliPair) -> None:
    """A delivery to BOUNCED, sent; returns once its three entries are listed."""
    cli = cli_pair.args
    recipients = " ".join(f"--recipient {a}" for a in BOUNCED)
    run(*cli(f"deliveries create --label Bounces --subject S --body B {recipients}"))
    run(*cli("deliveries prepare 1"))
    run(*cli("deliveries confirm 1"))
    deadline = time.monotonic() + 60
    while len(json.loads(run(*cli("addresses list --format json")).stdout)["addresses"]) < 3:
        assert time.monotonic() < deadline, "the feedback never reached the address table"
        time.sleep(0.2)


def test_addresses_list_show_and_formats(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    send_and_wait(cli_pair)

    table = run(*cli("addresses list")).stdout
    for address in OUTAGE:
        row(table, address, "QUARANTINED", "1", "hard: user unknown", "550 5.1.1")
    row(table, "complaint@other.example", "DENYLISTED", "0", "-", "-")
    assert table.splitlines()[-1] == "Last page."
    assert "feedback" in table

    shown = run(*cli("addresses show HARD+1@Outage.example")).stdout
    assert shown.splitlines()[0].strip() == "Address hard+1@outage.example"
    row(shown, "Status", "QUARANTINED")
    row(shown, "Failure", "hard: user unknown")
    row(shown, "SMTP reply", "550 5.1.1")
    row(shown, "Delivery", "1")
    row(shown, "Changed by", "feedback")
    never = run(*cli("--json addresses show never@seen.example")).stdout
    assert json.loads(never)["address"]["status"] == "VALID"
    assert json.loads(never)["address"]["update_time"] is None

    # JSON: the API's response; --format json and the global --json alike.
    listed = json.loads(run(*cli("--json addresses list --status denylisted")).stdout)
    assert [a["address"] for a in listed["addresses"]] == ["complaint@other.example"]
    assert listed["next_page_token"] == ""
    by_format = json.loads(run(*cli("addresses list --format json --status denylisted")).stdout)
    assert by_format == listed

    # CSV: a header and one row per entry, nothing else on stdout.
    out = run(*cli("addresses list --domain OUTAGE.example --format csv")).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["address"] for r in rows) == OUTAGE
    assert {(r["status"], r["smtp_code"], r["smtp_enhanced_status"]) for r in rows} == {
        ("QUARANTINED", "550", "5.1.1")
    }
    assert all(r["failure_reason"] == "USER_UNKNOWN" and r["update_time"] for r in rows)
    complaint = next(
        csv.DictReader(
            io.StringIO(run(*cli("addresses list --status denylisted --format csv")).stdout)
        )
    )
    assert (complaint["smtp_code"], complaint["first_error_time"]) == ("", "")

    # Each filter.
    def names(command: str) -> list[str]:
        data = json.loads(run(*cli(f"--json addresses list {command}")).stdout)
        return sorted(a["address"] for a in data["addresses"])

    assert names("--reason user-unknown") == OUTAGE
    assert names("--error-text 550-5.1.1") == OUTAGE
    assert names("--status quarantined --status denylisted") == sorted(BOUNCED)
    assert names("--domain other.example") == ["complaint@other.example"]
    window = "--changed-after 2000-01-01T00:00:00Z --changed-before 2100-01-01T01:00:00+01:00"
    assert names(window) == sorted(BOUNCED)
    assert names("--changed-after 2100-01-01T00:00:00Z") == []

    # A limit: the next page's command carries the filters.
    first = run(*cli("addresses list --limit 1 --domain outage.example")).stdout
    match = re.search(r"^More: (campaign addresses list .*)$", first, re.MULTILINE)
    assert match, first
    again = shlex.split(match.group(1))
    assert again[:5] == ["campaign", "addresses", "list", "--domain", "outage.example"]
    second = run(*cli(shlex.join(again[1:]))).stdout
    assert sum(a in first for a in OUTAGE) == 1 and sum(a in second for a in OUTAGE) == 1
    assert {a for a in OUTAGE if a in first} != {a for a in OUTAGE if a in second}
    limited = run(*cli("addresses list --limit 2 --format csv"))
    assert len(limited.stdout.splitlines()) == 3
    assert limited.stderr.startswith("More: campaign addresses list --page-token ")
    every = json.loads(run(*cli("--json addresses list --limit 1 --all")).stdout)
    assert len(every["addresses"]) == 3 and every["next_page_token"] == ""

    # Bad times: a usage error naming the option.
    bad = run(*cli("addresses list --changed-after yesterday"), code=2)
    assert "--changed-after" in bad.output and "RFC 3339" in bad.output
    assert "RFC 3339" in run(*cli("addresses list --changed-before 2026-01-01"), code=2).output


def test_addresses_changed_by_hand_and_released_in_bulk(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    send_and_wait(cli_pair)

    quarantined = run(*cli("addresses quarantine Ann@Example.com")).stdout
    assert quarantined.splitlines()[0] == "ann@example.com: quarantined."
    row(quarantined, "Status", "QUARANTINED")
    row(quarantined, "Changed by", "ops")
    row(run(*cli("addresses denylist ann@example.com")).stdout, "Status", "DENYLISTED")
    released = run(*cli("addresses release ann@example.com")).stdout
    assert released.splitlines()[0] == "ann@example.com: released (VALID)."
    row(released, "Status", "VALID")
    as_json = json.loads(run(*cli("--json addresses quarantine bob@example.com")).stdout)
    assert (as_json["address"]["status"], as_json["address"]["changed_by"]) == (
        "QUARANTINED",
        "ops",
    )

    outage = "--domain outage.example --error-text 550-5.1.1"
    dry = run(*cli(f"addresses release-all {outage} --dry-run")).stdout
    assert dry.strip() == "Would release 2 addresses (dry run: nothing changed)."
    assert "QUARANTINED" in run(*cli("addresses show hard+1@outage.example")).stdout
    assert run(*cli(f"addresses release-all {outage}")).stdout.strip() == "Released 2 addresses."
    row(run(*cli("addresses show hard+2@outage.example")).stdout, "Status", "VALID")
    assert json.loads(run(*cli("--json addresses release-all --status denylisted")).stdout) == {
        "released": 1,
        "dry_run": False,
    }
    assert (
        run(*cli("addresses release-all --status quarantined")).stdout.strip()
        == "Released 1 address."
    )

    # Errors: one line each.
    fails(
        *cli("addresses release-all"),
        expected="error: INVALID_ARGUMENT: filter: required: at least one field "
        "(to release every entry, name the statuses)",
    )
    fails(
        *cli("addresses show not-an-address"),
        expected="error: INVALID_ARGUMENT: address: must be an address of the form local@domain",
    )
    fails(
        *cli("addresses release-all --domain nodot"),
        expected="error: INVALID_ARGUMENT: filter.domain: must be a domain such as example.com "
        "(no '@', no spaces)",
    )
    reader = create_operator(cli_pair.database_url, "reader", "--role", "read_deliveries")
    as_reader = ["--address", cli_pair.address, "--token", reader]
    run(*as_reader, "addresses", "list")
    fails(
        *as_reader,
        "addresses",
        "quarantine",
        "x@example.com",
        expected="error: PERMISSION_DENIED: operator 'reader' lacks the role manage_profiles",
    )
    assert "erroneous" in run(*cli("addresses release-all --status valid"), code=2).output


def test_off_a_terminal_nothing_is_cut(cli_pair: CliPair) -> None:
    long = "a" * 120 + "@" + "b" * 60 + ".example"
    run(*cli_pair.args(f"addresses denylist {long}"))
    narrow = run_process(*cli_pair.args("addresses list"), env={"COLUMNS": "40", "TERM": "dumb"})
    assert narrow.returncode == 0, narrow.stderr
    assert any(long in line for line in narrow.stdout.splitlines()), narrow.stdout
    shown = run_process(*cli_pair.args(f"addresses show {long}"), env={"COLUMNS": "40"})
    assert any(long in line for line in shown.stdout.splitlines()), shown.stdout
