"""`campaign events` and `campaign logs timeline` against the real pair: a delivery to
the stub's patterns (delivered, a hard bounce, two soft bounces then delivered, a
complaint) run to FINISHED. The CLI lists the same events as ListDeliveryEvents, in every
format; `--follow --from-end`, a process started before the delivery and stopped with
Ctrl-C, prints them all once; `--cursor-file` resumes without duplicates across runs; a
message's timeline shows the relay, then the bounces."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from tests.integration import test_cli
from tests.integration.test_cli import CliPair, fails, row, run, run_json
from tests.support import callers
from tools.processes import REPO_ROOT, child_env, wait_until

# test_cli.py's pair: a stub retrying soft bounces every 100 ms.
cli_pair = test_cli.cli_pair

EMAILS = ["ok@example.com", "hard@example.com", "soft-2@example.com", "complaint@example.com"]


def send(cli_pair: CliPair, emails: list[str]) -> int:
    """A delivery valid 2 s, sent and run to FINISHED (its feedback is in by then)."""
    recipients = " ".join(f"--recipient {e}" for e in emails)
    created = run_json(
        *cli_pair.args(
            f"deliveries create --label L --subject S --body B --validity 2s {recipients}"
        )
    )
    delivery_id: int = created["delivery"]["id"]
    run(*cli_pair.args(f"deliveries prepare {delivery_id}"))
    run(*cli_pair.args(f"deliveries confirm {delivery_id}"))
    wait_until(
        lambda: (
            run_json(*cli_pair.args(f"deliveries get {delivery_id}"))["delivery"]["state"]
            == "FINISHED"
        ),
        60,
        0.2,
        message=f"delivery {delivery_id} never FINISHED",
    )
    return delivery_id


def listed(cli_pair: CliPair, delivery_id: int = 0) -> tuple[list[pb.DeliveryEvent], str]:
    """The feed as ListDeliveryEvents pages it, and the cursor at its end."""
    with callers.channel(cli_pair.address, callers.bearer(cli_pair.token)) as channel:
        service = pb_grpc.DeliveryServiceStub(channel)
        found: list[pb.DeliveryEvent] = []
        after = ""
        while True:
            page = service.ListDeliveryEvents(
                pb.ListDeliveryEventsRequest(delivery_id=delivery_id, after=after, page_size=3),
                timeout=30,
            )
            found += page.events
            after = page.next_cursor
            if page.caught_up:
                return found, after


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def follower(cli_pair: CliPair, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`campaign events --follow ...` as a process of its own, its output in files."""
    command = [sys.executable, "-m", "campaign_cli", *cli_pair.args("events --follow"), *args]
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=child_env(),
            cwd=REPO_ROOT,
        )


def test_the_feed_in_every_format_live_and_listed(cli_pair: CliPair, tmp_path: Path) -> None:
    # Following from the end, started before the delivery: its first cursor, in the
    # file, says it has its place.
    cursor_file = tmp_path / "cursor"
    process = follower(
        cli_pair, tmp_path, "--from-end", "--format", "json", "--cursor-file", str(cursor_file)
    )
    try:
        wait_until(cursor_file.exists, 30, message="the follower never started")
        delivery_id = send(cli_pair, EMAILS)
        expected, end = listed(cli_pair, delivery_id)
        ids = [e.event_id for e in expected]
        wait_until(
            lambda: len((tmp_path / "out").read_text().splitlines()) >= len(ids),
            30,
            message=lambda: f"the follower printed {(tmp_path / 'out').read_text()}",
        )
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0, (tmp_path / "err").read_text()
    followed = lines((tmp_path / "out").read_text())
    # Every delivery's feed: only this delivery was sent since the follower started.
    assert [e["event_id"] for e in followed] == ids
    err = (tmp_path / "err").read_text()
    assert err.splitlines()[-1] == f"Last cursor: {cursor_file.read_text().strip()}", err
    assert "Traceback" not in err

    # Listed: the same events, with their cursors; the last cursor on stderr.
    as_json = run(*cli_pair.args(f"events --delivery {delivery_id} --format json"))
    assert [e["event_id"] for e in lines(as_json.stdout)] == ids
    assert [e["cursor"] for e in lines(as_json.stdout)] == [e.cursor for e in expected]
    assert as_json.stderr == f"Last cursor: {end}\n"
    assert lines(run(*cli_pair.args(f"--json events --delivery {delivery_id}")).stdout) == (
        lines(as_json.stdout)
    )
    kinds = {e["kind"] for e in followed}
    assert {"RELAYED", "DELIVERED", "HARD_BOUNCE", "SOFT_BOUNCE", "COMPLAINT"} <= kinds

    # CSV: a header, a row per event, the reply in its columns.
    rows = list(csv.DictReader(io.StringIO(run(*cli_pair.args("events --format csv")).stdout)))
    assert [r["event_id"] for r in rows] == ids
    bounce = next(r for r in rows if r["kind"] == "HARD_BOUNCE")
    assert (bounce["address"], bounce["reason"], bounce["smtp_reply.code"]) == (
        "hard@example.com", "USER_UNKNOWN", "550",
    )  # fmt: skip

    # Kinds filter; the table.
    only = run(*cli_pair.args("events --kind hard-bounce --kind complaint --format json"))
    assert sorted(e["address"] for e in lines(only.stdout)) == [
        "complaint@example.com", "hard@example.com",
    ]  # fmt: skip
    assert only.stderr == f"Last cursor: {end}\n"
    table = run(*cli_pair.args(f"events --delivery {delivery_id}")).stdout
    hard = next(e for e in expected if e.kind == pb.DELIVERY_EVENT_KIND_HARD_BOUNCE)
    row(table, str(delivery_id), str(hard.message_id), "hard@example.com", "hard bounce", "1")
    row(table, "user unknown", "", "550", "5.1.1", "<hard@example.com>:")
    assert table.count("Time (UTC)") == 1

    # Bad input: one line each.
    fails(
        *cli_pair.args("events --delivery 999"),
        expected="error: NOT_FOUND: delivery 999 does not exist",
    )
    bad = run(*cli_pair.args("events --after nonsense"), code=1)
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: after: "), bad.stderr


def test_a_cursor_file_resumes_without_duplicates(cli_pair: CliPair, tmp_path: Path) -> None:
    cursor_file = tmp_path / "cursor"
    export = cli_pair.args(f"events --format json --cursor-file {cursor_file}")
    first = send(cli_pair, EMAILS[:2])
    before = lines(run(*export).stdout)
    second = send(cli_pair, EMAILS[2:])
    after = lines(run(*export).stdout)
    assert {e["delivery_id"] for e in before} == {first}
    assert {e["delivery_id"] for e in after} == {second}
    everything, end = listed(cli_pair)
    assert [e["event_id"] for e in before + after] == [e.event_id for e in everything]
    assert cursor_file.read_text() == f"{end}\n"
    # Caught up: a third run prints nothing and keeps the cursor.
    again = run(*export)
    assert (again.stdout, again.stderr) == ("", f"Last cursor: {end}\n")


def test_a_messages_timeline(cli_pair: CliPair) -> None:
    delivery_id = send(cli_pair, EMAILS[1:3])
    logs = run_json(*cli_pair.args(f"logs {delivery_id}"))["sending_logs"]
    message = {log["email"]: log["message_id"] for log in logs}

    hard = run_json(*cli_pair.args(f"logs timeline {delivery_id} {message['hard@example.com']}"))
    assert [e["kind"] for e in hard["events"]] == ["RELAYED", "HARD_BOUNCE"]
    soft = run(*cli_pair.args(f"logs timeline {delivery_id} {message['soft-2@example.com']}"))
    kinds = [
        found.group(1)
        for line in soft.stdout.splitlines()
        if (found := re.match(r"\s+\S+ \S+\s+(relayed|soft bounce|delivered)\s", line))
    ]
    # The timeline is in commit order: relayed first (feedback is believed only after
    # it), the MTA's reports as their batches were applied.
    assert kinds[0] == "relayed", soft.stdout
    assert sorted(kinds[1:]) == ["delivered", "soft bounce", "soft bounce"], soft.stdout
    row(soft.stdout, "soft bounce", "2", "mailbox full", "", "452", "4.2.2")
    csv_of = cli_pair.args(f"logs timeline {delivery_id} {message['soft-2@example.com']}")
    as_csv = list(csv.DictReader(io.StringIO(run(*csv_of, "--format", "csv").stdout)))
    assert sorted(r["attempt"] for r in as_csv if r["kind"] == "SOFT_BOUNCE") == ["1", "2"]
    fails(
        *cli_pair.args(f"logs timeline {delivery_id} 999"),
        expected=f"error: NOT_FOUND: message 999 of delivery {delivery_id} does not exist",
    )
