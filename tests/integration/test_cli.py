"""The `campaign` CLI against the real pair: every command, in tables and in --json, and its errors.

Most calls go through typer's CliRunner on the app (fast, in process); some run
`python -m campaign_cli` as a subprocess, so the real entry point is covered too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from typer.testing import CliRunner, Result

from campaign_cli import operators
from campaign_cli.app import app
from tests.conftest import Servers
from tests.integration import flows
from tests.support import callers, processes
from tests.support.callers import CALLER_ROLES, bearer
from tools import embedded_pg, run_pair
from tools.processes import REPO_ROOT, child_env

# Wide enough that no table cell wraps; nothing from the caller's environment leaks in.
ENV: dict[str, str | None] = {
    "COLUMNS": "200",
    "CAMPAIGN_ADDRESS": None,
    "CAMPAIGN_TOKEN": None,
    "DATABASE_URL": None,
}
RUNNER = CliRunner(env=ENV)
# Every role but admin, as --role options.
BOTH_ROLES = tuple(option for role in CALLER_ROLES for option in ("--role", role))


def run(*args: str, code: int = 0) -> Result:
    """`campaign *args` in process; checks the exit code and that no traceback shows."""
    result = RUNNER.invoke(app, list(args), prog_name="campaign")
    assert result.exit_code == code, (
        f"campaign {shlex.join(args)} exited with {result.exit_code}, not {code}:\n"
        f"{result.output}\n{result.exception!r}"
    )
    # Anything else than SystemExit is a bug that CliRunner caught.
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result


def run_json(*args: str) -> Any:
    return json.loads(run("--json", *args).stdout)


def run_process(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m campaign_cli *args`: the real entry point, in a process of its own."""
    environment = child_env({"COLUMNS": "200", **(env or {})})
    for name in ("CAMPAIGN_ADDRESS", "CAMPAIGN_TOKEN", "DATABASE_URL"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "campaign_cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def assert_error(stderr: str, stdout: str, expected: str) -> None:
    """Exactly one line, `error: ...`, on stderr; nothing on stdout."""
    assert stderr.splitlines() == [expected], stderr
    assert stdout == ""
    assert "Traceback" not in stderr


def fails(*args: str, expected: str) -> None:
    """`campaign *args` exits with 1 and the one line `expected` on stderr."""
    result = run(*args, code=1)
    assert_error(result.stderr, result.stdout, expected)


def row(output: str, *cells: str) -> None:
    """Some line of `output` holds these cells in order, separated by spaces only."""
    pattern = r"\s+".join(re.escape(c) for c in cells)
    assert re.search(rf"(^|\s){pattern}(\s|$)", output, re.MULTILINE), (
        f"no row {cells} in:\n{output}"
    )


@dataclass
class CliPair:
    """A running pair, and `campaign` options that reach it."""

    address: str
    mta_address: str
    database_url: str
    token: str

    def args(self, command: str) -> list[str]:
        """The arguments of `command` (shell syntax), after options that reach the pair."""
        return ["--address", self.address, "--token", self.token, *shlex.split(command)]


def create_operator(database_url: str, name: str, *roles: str) -> str:
    created = run_json("operators", "create", name, *roles, "--database-url", database_url)
    token: str = created["token"]
    return token


@pytest.fixture
def cli_pair(fresh_db_url: str, servers: Servers) -> CliPair:
    # A stub of its own: message ids restart at 1 in every fresh database.
    pair = servers.pair(fresh_db_url, ("--retry-interval-ms", "100", "--engagement-delay-ms", "50"))
    token = create_operator(fresh_db_url, "ops", *BOTH_ROLES)
    return CliPair(pair.service.address, pair.stub.address, fresh_db_url, token)


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- operators -----------------------------------------------------------------------------


def test_operators_create(
    fresh_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = run("operators", "create", "alice", *BOTH_ROLES, "--database-url", fresh_db_url)
    lines = table.stdout.splitlines()
    assert lines[0] == f"Operator 'alice' created with roles {', '.join(CALLER_ROLES)}."
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", lines[-1])

    created = run_json(
        "operators", "create", "bob", "--role", "approve_deliveries", "--database-url", fresh_db_url
    )
    assert created["name"] == "bob"
    assert created["roles"] == ["approve_deliveries"]
    assert created["token"] != lines[-1]

    # The real entry point, with the database from the environment.
    again = run_process("operators", "create", "alice", env={"DATABASE_URL": fresh_db_url})
    assert again.returncode == 1
    assert_error(
        again.stderr,
        again.stdout,
        "error: ALREADY_EXISTS: an operator named 'alice' already exists",
    )

    nowhere = embedded_pg.make_url(fresh_db_url, host=str(tmp_path))
    down = run("operators", "create", "carol", "--database-url", nowhere, code=1)
    assert down.stderr.startswith("error: UNAVAILABLE: cannot reach the database: ")
    assert len(down.stderr.splitlines()) == 1

    # Outside a checkout there is no `make run` database to find.
    monkeypatch.chdir(tmp_path)
    missing = run("operators", "create", "dave", code=2)
    assert "--database-url" in missing.output


@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL", "").strip()),
    reason="the suite's PostgreSQL is not embedded",
)
def test_the_cli_finds_the_embedded_database(tmp_path: Path) -> None:
    # What `make run` uses: the service's database on the embedded server, as its
    # launcher says (the CLI asks it), from the checkout's root or any folder inside.
    expected = embedded_pg.uri(dbname=run_pair.DB_NAME)
    assert operators.embedded_database_url(REPO_ROOT) == expected
    assert operators.embedded_database_url(REPO_ROOT / "docs") == expected
    assert operators.embedded_database_url(tmp_path) == ""


def refused_soon(*args: str, expected: str) -> None:
    """`campaign *args` fails with `expected` within 5 s: the service believes a looked-up
    token for up to 2 s after it is rotated or revoked."""
    deadline = time.monotonic() + 5
    while True:
        result = RUNNER.invoke(app, list(args), prog_name="campaign")
        if result.exit_code == 1:
            assert_error(result.stderr, result.stdout, expected)
            return
        assert result.exit_code == 0, result.output
        assert time.monotonic() < deadline, f"campaign {shlex.join(args)} still accepted"
        time.sleep(0.2)


def test_operators_through_the_service(
    cli_pair: CliPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = processes.create_operator(cli_pair.database_url, "root", "admin")
    admin = ["--address", cli_pair.address, "--token", root]

    table = run(
        *admin, "operators", "create", "carol", "--role", "read_deliveries", "--expires", "30d"
    ).stdout.splitlines()
    assert table[0] == "Operator 'carol' created with roles read_deliveries."
    shown = re.fullmatch(r"Its token expires (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\.", table[1])
    assert shown, table
    expires = dt.datetime.fromisoformat(shown.group(1)).replace(tzinfo=dt.UTC)
    in_30_days = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    assert abs(expires - in_30_days) < dt.timedelta(minutes=1)
    carol = table[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", carol)
    # The new token works, with its role.
    assert run_json("--address", cli_pair.address, "--token", carol, "deliveries", "list") == {
        "deliveries": [],
        "next_page_token": "",
    }

    # DATABASE_URL in the environment does not take the call away from the service when
    # a token is given: the JSON is the API's answer (the offline one has no "operator").
    process = run_process(
        *admin,
        "--json",
        "operators",
        "create",
        "dave",
        "--role",
        "create_deliveries",
        "--role",
        "read_deliveries",
        env={"DATABASE_URL": cli_pair.database_url},
    )
    assert process.returncode == 0, process.stderr
    created = json.loads(process.stdout)
    assert created["operator"]["name"] == "dave"
    assert created["operator"]["roles"] == ["create_deliveries", "read_deliveries"]
    assert created["operator"]["create_time"].endswith("Z")
    assert created["operator"]["expire_time"] is None
    dave = created["token"]

    listed = run(*admin, "operators", "list").stdout
    row(listed, "ops", ", ".join(CALLER_ROLES))
    row(listed, "root", "admin")
    row(listed, "carol", "read_deliveries")
    row(listed, "dave", "create_deliveries, read_deliveries")
    assert re.search(rf"carol\s+read_deliveries\s+\S+ \S+\s+{shown.group(1)}\s", listed), listed
    assert listed.splitlines()[-1] == "Last page."
    names = [o["name"] for o in run_json(*admin, "operators", "list")["operators"]]
    assert names == ["ops", "root", "carol", "dave"]
    first = run(*admin, "operators", "list", "--page-size", "3").stdout
    assert re.search(r"^More: campaign operators list --page-token \S+$", first, re.MULTILINE)
    assert "dave" not in first
    every = run_json(*admin, "operators", "list", "--page-size", "3", "--all")
    assert [o["name"] for o in every["operators"]] == names
    assert every["next_page_token"] == ""

    # Rotate: a new token, and the old one refused.
    rotated = run(*admin, "operators", "rotate", "dave").stdout
    assert rotated.startswith("Operator dave")
    row(rotated, "Roles", "create_deliveries, read_deliveries")
    new_dave = rotated.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", new_dave) and new_dave != dave
    run("--address", cli_pair.address, "--token", new_dave, "deliveries", "list")
    refused_soon(
        *("--address", cli_pair.address, "--token", dave, "deliveries", "list"),
        expected="error: UNAUTHENTICATED: the token is not an operator's",
    )
    again = run_json(*admin, "operators", "rotate", "dave")
    assert again["operator"]["name"] == "dave" and again["token"] not in (dave, new_dave)

    # Revoke: the token refused; revoking again changes nothing.
    revoked = run(*admin, "operators", "revoke", "carol").stdout
    assert re.search(r"^\s*Revoked\s+\d{4}-\d\d-\d\d \S+ UTC\s*$", revoked, re.MULTILINE)
    refused_soon(
        *("--address", cli_pair.address, "--token", carol, "deliveries", "list"),
        expected="error: UNAUTHENTICATED: the token is not an operator's",
    )
    twice = run_json(*admin, "operators", "revoke", "carol")["operator"]
    assert twice["revoke_time"] is not None
    row(run(*admin, "operators", "list").stdout, "carol", "read_deliveries")

    # Errors: one line each.
    for args, expected in (
        (
            ("--token", cli_pair.token, "operators", "list"),
            "error: PERMISSION_DENIED: operator 'ops' lacks the role admin",
        ),
        (
            ("--token", root, "operators", "revoke", "nobody"),
            "error: NOT_FOUND: operator 'nobody' does not exist",
        ),
        (
            ("--token", root, "operators", "create", "dave"),
            "error: ALREADY_EXISTS: an operator named 'dave' already exists",
        ),
    ):
        fails("--address", cli_pair.address, *args, expected=expected)
    # Neither a token nor a database (outside a checkout: no `make run` database to find);
    # an expiry offline: usage errors.
    monkeypatch.chdir(tmp_path)
    nothing = run("--address", cli_pair.address, "operators", "create", "erin", code=2)
    assert "--token" in nothing.output and "--database-url" in nothing.output
    offline = ["operators", "create", "erin", "--database-url", cli_pair.database_url]
    assert "--expires" in run(*admin, *offline, "--expires", "1d", code=2).output
    bad = run(*admin, "operators", "create", "erin", "--expires", "soon", code=2)
    assert "--expires" in bad.output


# --- profiles ------------------------------------------------------------------------------


def test_profiles_import(cli_pair: CliPair, tmp_path: Path) -> None:
    people = write_csv(
        tmp_path / "people.csv",
        "profile_id,email,quarantined,segments",
        *(f"p{i},person{i}@example.com,{'true' if i == 6 else ''},vip;news" for i in range(7)),
    )
    base = ["--address", cli_pair.address, "--token", cli_pair.token]

    table = run(*base, "profiles", "import", str(people), "--chunk-size", "3")
    assert table.stdout.strip() == "Imported 7 profiles from people.csv: 7 created, 0 updated."
    again = run_json(*base, "profiles", "import", str(people))
    assert again == {"file": str(people), "profiles": 7, "created": 0, "updated": 7}

    # A bad row: the service refuses its chunk; the error names the file's line.
    bad = write_csv(
        tmp_path / "bad.csv",
        "profile_id,email",
        *(f"q{i},q{i}@example.com" for i in range(4)),
        "q4,not an address",
    )
    refused = run(*base, "profiles", "import", str(bad), "--chunk-size", "3", code=1)
    assert_error(
        refused.stderr,
        refused.stdout,
        "error: INVALID_ARGUMENT: profiles[1].email: must not contain spaces or control "
        "characters (bad.csv line 6; the 3 profiles before it were imported)",
    )

    headless = write_csv(tmp_path / "headless.csv", "id,mail", "x,x@example.com")
    wrong = run(*base, "profiles", "import", str(headless), code=1)
    assert_error(
        wrong.stderr,
        wrong.stdout,
        "error: headless.csv: the header lacks profile_id, email "
        "(columns: profile_id, email, quarantined, segments)",
    )


# --- a delivery in tables --------------------------------------------------------------------

INLINE = [
    "ann@example.com",
    "open@example.com",
    "click-0@example.com",
    "hard-user-unknown@example.com",
    "soft-1@example.com",
    "ann@example.com",  # dropped: duplicate
    "bad@localhost",  # dropped: invalid address
]


def test_delivery_in_tables(cli_pair: CliPair, tmp_path: Path) -> None:
    body = tmp_path / "body.html"
    body.write_text("<p>Hi <a href='https://example.com/a'>a</a></p>", encoding="utf-8")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("# the list\n" + "\n".join(INLINE[1:]) + "\n\n", encoding="utf-8")
    cli = cli_pair.args

    created = run(
        *cli(
            "deliveries create --label 'Welcome [test]' --subject Hi "
            f"--body-file {shlex.quote(str(body))} --link https://example.com/a "
            f"--recipient {INLINE[0]} --recipients-file {shlex.quote(str(recipients))} "
            "--validity 2s --approval target --approval content"
        )
    ).stdout
    assert created.startswith("Delivery 1")
    row(created, "Label", "Welcome [test]")
    row(created, "State", "DRAFT")
    row(created, "Feedback", "EFS")
    row(created, "Validity", "2s")
    row(created, "Approvals", "none (required: target, content)")

    prepared = run(*cli("deliveries prepare 1")).stdout
    row(prepared, "State", "PREPARED")
    row(prepared, "Targeted", "7")
    row(prepared, "To deliver", "5")
    row(prepared, "Dropped", "2")
    row(prepared, "duplicate", "1")
    row(prepared, "invalid address", "1")
    row(prepared, "bad@localhost", "invalid address")

    approved = run(*cli("deliveries approve 1 --step target --step content")).stdout
    row(approved, "State", "APPROVED")
    row(approved, "Approvals", "target, content (required: target, content)")

    confirmed = run(*cli("deliveries confirm 1")).stdout
    row(confirmed, "State", "SENDING")
    row(confirmed, "Confirmed by", "ops")

    watched = run(*cli("watch 1")).stdout
    assert watched.startswith("Delivery 1: Welcome [test]\n")
    assert re.search(r"^FINISHED\s+\S+ 5/5 100%$", watched, re.MULTILINE), watched
    row(watched, "delivered 4 · failed 1 · pending 0")
    row(watched, "To deliver", "5")
    row(watched, "Sent (relayed)", "5")
    row(watched, "Delivered", "4", "80.00 %")
    row(watched, "Bounces + errors", "1", "20.00 %")
    row(watched, "Pending", "0")
    row(watched, "Final", "yes")

    recomputed = run(*cli("stats compute 1")).stdout
    row(recomputed, "Opened", "2", "50.00 %")
    row(recomputed, "Clicked", "1", "25.00 %")
    assert recomputed.splitlines()[-1] == "Repaired counters: 0"
    kpis = run(*cli("kpis 1")).stdout
    assert kpis.startswith("KPIs of delivery 1")
    row(kpis, "Delivered", "4", "80.00 %")
    row(kpis, "Opened", "2", "50.00 %")
    row(kpis, "Feedback", "EFS")

    logs = run(*cli("logs 1")).stdout
    row(logs, "1", "ann@example.com", "SENT")
    row(logs, "4", "hard-user-unknown@example.com", "FAILED", "hard: user unknown")
    row(logs, "yes", "yes")  # click-0: opened and clicked
    assert logs.splitlines()[-1] == "Last page."
    failed = run(*cli("logs 1 --status failed")).stdout
    assert "hard-user-unknown@example.com" in failed
    assert "ann@example.com" not in failed

    first = run(*cli("logs 1 --page-size 2")).stdout
    match = re.search(r"^More: campaign logs 1 --page-token (\S+)$", first, re.MULTILINE)
    assert match, first
    second = run(*cli(f"logs 1 --page-size 2 --page-token {match.group(1)}")).stdout
    assert "click-0@example.com" in second and "ann@example.com" not in second
    every = run(*cli("logs 1 --page-size 2 --all")).stdout
    assert all(email in every for email in INLINE[:5])
    assert every.splitlines()[-1] == "Last page."

    history = run(*cli("history --email hard-user-unknown@example.com")).stdout
    row(history, "1", "4", "hard-user-unknown@example.com", "FAILED", "hard: user unknown")

    row(run(*cli("deliveries get 1")).stdout, "State", "FINISHED")

    # A second delivery, stopped before it is prepared.
    run(*cli("deliveries create --label Later --subject S --body B --recipient a@example.com"))
    stopped = run(*cli("deliveries stop 2")).stdout
    assert stopped.startswith("Delivery 2")
    row(stopped, "State", "STOPPED")

    listed = run(*cli("deliveries list")).stdout
    row(listed, "2", "Later", "STOPPED", "EFS", "0")
    row(listed, "1", "Welcome [test]", "FINISHED", "EFS", "5")
    only = run(*cli("deliveries list --state stopped")).stdout
    assert "Later" in only and "Welcome" not in only
    paged = run(*cli("deliveries list --page-size 1")).stdout
    assert re.search(r"^More: campaign deliveries list --page-token \S+$", paged, re.MULTILINE)


# --- a delivery in JSON ----------------------------------------------------------------------


def test_delivery_in_json(cli_pair: CliPair, tmp_path: Path) -> None:
    people = write_csv(
        tmp_path / "people.csv",
        "profile_id,email,quarantined,segments",
        "p1,ann@example.com,,vip",
        "p2,hard-user-unknown@example.com,,vip;news",
        "p3,quiet@example.com,true,vip",
        "p4,other@example.com,,news",
    )
    cli = cli_pair.args
    assert run_json(*cli(f"profiles import {shlex.quote(str(people))}"))["created"] == 4

    create = "deliveries create --label VIP --subject Hi --body '<p>Hi</p>' --segment vip"
    options = "--validity 2s --no-efs --approval content --request-id vip-1"
    created = run_json(*cli(f"{create} {options}"))
    delivery = created["delivery"]
    assert delivery["id"] == 1
    assert delivery["state"] == "DRAFT"
    assert delivery["feedback_mode"] == "WITHOUT_EFS"
    assert delivery["validity_period"] == 2.0
    assert delivery["required_approvals"] == ["CONTENT"]
    assert delivery["confirm_time"] is None
    # The same request with the same request id: the same delivery back.
    assert run_json(*cli(f"{create} {options}"))["delivery"]["id"] == 1
    # Another request with it: refused, naming the field.
    reused = run(*cli(f"{create} --request-id vip-1"), code=1)
    assert reused.stderr.startswith("error: ALREADY_EXISTS: request_id: ")

    prepared = run_json(*cli("deliveries prepare 1"))
    assert prepared["delivery"]["state"] == "PREPARED"
    assert (prepared["targeted"], prepared["to_deliver"]) == (3, 2)
    assert prepared["dropped_by_reason"] == {"QUARANTINED": 1}
    assert prepared["dropped"] == [{"recipient": {"profile_id": "p3"}, "reason": "QUARANTINED"}]

    approved = run_json(*cli("deliveries approve 1 --step content"))
    assert approved["delivery"]["state"] == "APPROVED"
    assert approved["delivery"]["approvals"] == ["CONTENT"]

    lines = run("--json", *cli("deliveries confirm 1 --watch")).stdout.splitlines()
    confirmed, *updates = (json.loads(line) for line in lines)
    assert confirmed["delivery"]["state"] == "SENDING"
    assert confirmed["delivery"]["confirmed_by"] == "ops"
    assert updates, "no update streamed"
    last = updates[-1]
    assert last["state"] == "FINISHED"
    assert (last["to_deliver"], last["relayed"], last["percent"]) == (2, 2, 100.0)
    assert last["kpis"]["final"] is True
    assert all(u["state"] in ("SENDING", "SENT", "FINISHED") for u in updates)

    # The real entry point, with the address from the environment.
    process = run_process(
        "--json",
        "kpis",
        "1",
        env={"CAMPAIGN_ADDRESS": cli_pair.address, "CAMPAIGN_TOKEN": cli_pair.token},
    )
    assert process.returncode == 0, process.stderr
    kpis = json.loads(process.stdout)["kpis"]
    assert kpis["feedback_mode"] == "WITHOUT_EFS"
    assert (kpis["to_deliver"], kpis["sent"], kpis["delivered"], kpis["failed"]) == (2, 2, 1, 1)
    assert (kpis["delivered_percent"], kpis["bounces_percent"]) == (50.0, 50.0)
    assert kpis["final"] is True

    stats = run_json(*cli("stats compute 1"))
    assert stats["repaired_counters"] == 0
    assert stats["kpis"]["failed"] == 1
    assert stats["kpis"]["stats_time"].endswith("Z")

    logs = run_json(*cli("logs 1"))
    assert [(log["profile_id"], log["status"]) for log in logs["sending_logs"]] == [
        ("p1", "SENT"),
        ("p2", "FAILED"),
    ]
    assert logs["next_page_token"] == ""
    failed = run_json(*cli("logs 1 --status failed"))["sending_logs"]
    assert [(f["email"], f["failure_type"], f["failure_reason"]) for f in failed] == [
        ("hard-user-unknown@example.com", "HARD", "USER_UNKNOWN")
    ]
    page = run_json(*cli("logs 1 --page-size 1"))
    assert len(page["sending_logs"]) == 1 and page["next_page_token"]
    rest = run_json(*cli(f"logs 1 --page-size 1 --page-token {page['next_page_token']}"))
    assert rest["sending_logs"][0]["profile_id"] == "p2"
    every = run_json(*cli("logs 1 --page-size 1 --all"))
    assert len(every["sending_logs"]) == 2 and every["next_page_token"] == ""

    history = run_json(*cli("history --profile-id p2"))["sending_logs"]
    assert [(h["delivery_id"], h["status"]) for h in history] == [(1, "FAILED")]

    got = run_json(*cli("deliveries get 1"))["delivery"]
    assert got["state"] == "FINISHED"
    assert got["validity_end_time"].endswith("Z")

    run_json(*cli("deliveries create --label Later --subject S --body B --segment news"))
    assert run_json(*cli("deliveries stop 2"))["delivery"]["state"] == "STOPPED"

    listed = run_json(*cli("deliveries list"))["deliveries"]
    assert [(d["id"], d["state"]) for d in listed] == [(2, "STOPPED"), (1, "FINISHED")]
    finished = run_json(*cli("deliveries list --state finished"))["deliveries"]
    assert [d["id"] for d in finished] == [1]


# --- errors ----------------------------------------------------------------------------------


def test_errors_are_one_line(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    for command in (
        "deliveries get 999",
        "deliveries prepare 999",
        "kpis 999",
        "watch 999",
        "logs 999",
        "stats compute 999",
    ):
        result = run(*cli(command), code=1)
        assert_error(result.stderr, result.stdout, "error: NOT_FOUND: delivery 999 does not exist")

    create = "deliveries create --label L --subject S --body B"
    run(*cli(f"{create} --recipient ann@example.com"))
    early = run(*cli("deliveries confirm 1"), code=1)
    assert early.stderr.startswith("error: FAILED_PRECONDITION: ")
    run(*cli("deliveries prepare 1"))

    # The real entry point, without a token.
    anonymous = run_process("--address", cli_pair.address, "deliveries", "confirm", "1")
    assert anonymous.returncode == 1
    assert_error(
        anonymous.stderr,
        anonymous.stdout,
        "error: UNAUTHENTICATED: an operator token is required: authorization: Bearer <token> "
        "(pass --token or set CAMPAIGN_TOKEN)",
    )
    approver = create_operator(cli_pair.database_url, "approver", "--role", "approve_deliveries")
    fails(
        *("--address", cli_pair.address, "--token", approver, "deliveries", "confirm", "1"),
        expected="error: PERMISSION_DENIED: operator 'approver' lacks the role start_deliveries",
    )

    invalid = run(*cli(f"{create} --recipient 'a b@example.com'"), code=1)
    assert invalid.stderr.startswith("error: INVALID_ARGUMENT: target.recipients.recipients[0]")

    # Usage errors are typer's: exit code 2.
    late = run(*cli(f"{create} --recipient a@example.com --validity soon"), code=2)
    assert "--validity" in late.output
    run(*cli(create), code=2)
    run(*cli("history"), code=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_service() -> None:
    address = f"127.0.0.1:{_free_port()}"
    expected = f"error: UNAVAILABLE: cannot reach the delivery service at {address}"
    for command in (["kpis", "1"], ["watch", "1"], ["deliveries", "list"]):
        result = run("--address", address, *command, code=1)
        assert_error(result.stderr, result.stdout, expected)
    process = run_process("--json", "deliveries", "get", "1", env={"CAMPAIGN_ADDRESS": address})
    assert process.returncode == 1
    assert_error(process.stderr, process.stdout, expected)


# --- recurring deliveries and the audit trail ------------------------------------------------


def create_recurring(cli_pair: CliPair, label: str) -> int:
    """A recurring delivery whose first occurrence is an hour away (the CLI does not create
    them): what pause, resume and cancel act on."""
    first = timestamp_pb2.Timestamp()
    first.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    request = pb.CreateRecurringDeliveryRequest(
        label=label,
        content=pb.Content(subject="Weekly", body="<p>News</p>"),
        target=pb.Target(
            recipients=pb.RecipientList(recipients=[pb.Recipient(email="ann@example.com")])
        ),
        validity_period=duration_pb2.Duration(seconds=60),
        feedback_mode=pb.FEEDBACK_MODE_EFS,
        interval=duration_pb2.Duration(seconds=7 * 86_400),
        first_occurrence_time=first,
        confirm_before_send=False,
    )
    with grpc.insecure_channel(cli_pair.address) as channel:
        response = pb_grpc.DeliveryServiceStub(channel).CreateRecurringDelivery(
            request, metadata=bearer(cli_pair.token), timeout=10
        )
    recurring_id: int = response.recurring_delivery.id
    return recurring_id


def test_recurring_pause_resume_cancel(cli_pair: CliPair) -> None:
    cli = cli_pair.args
    weekly = create_recurring(cli_pair, "Weekly news")

    got = run(*cli(f"recurring get {weekly}")).stdout
    assert got.startswith(f"Recurring delivery {weekly}")
    row(got, "Label", "Weekly news")
    row(got, "State", "ACTIVE")
    row(got, "Interval", "7d")
    row(got, "Sends", "unattended")
    row(got, "Occurrences", "0")
    row(got, "Created by", "ops")

    paused = run(*cli(f"recurring pause {weekly}")).stdout
    row(paused, "State", "PAUSED")
    row(paused, "Created by", "ops")
    assert run_json(*cli(f"recurring pause {weekly}"))["recurring_delivery"]["state"] == "PAUSED"
    resumed = run_json(*cli(f"recurring resume {weekly}"))["recurring_delivery"]
    assert (resumed["state"], resumed["created_by"]) == ("ACTIVE", "ops")
    assert resumed["next_occurrence_time"].endswith("Z")
    row(run(*cli(f"recurring cancel {weekly}")).stdout, "State", "CANCELLED")
    cancelled = run_json(*cli(f"recurring get {weekly}"))
    assert cancelled["recurring_delivery"]["state"] == "CANCELLED"
    assert cancelled["occurrences"] == []

    late = run(*cli(f"recurring resume {weekly}"), code=1)
    assert late.stderr.startswith("error: FAILED_PRECONDITION: ")
    fails(
        *cli("recurring pause 999"),
        expected="error: NOT_FOUND: recurring delivery 999 does not exist",
    )
    reader = create_operator(cli_pair.database_url, "reader", "--role", "read_deliveries")
    fails(
        *("--address", cli_pair.address, "--token", reader, "recurring", "pause", "1"),
        expected="error: PERMISSION_DENIED: operator 'reader' lacks the role start_deliveries",
    )


def test_audit_lists_the_changes(cli_pair: CliPair) -> None:
    root = processes.create_operator(cli_pair.database_url, "root", "admin")
    admin = ["--address", cli_pair.address, "--token", root]
    cli = cli_pair.args
    weekly = create_recurring(cli_pair, "Weekly")
    run(*cli(f"recurring pause {weekly}"))
    run(*cli(f"recurring cancel {weekly}"))
    run(*cli(f"recurring resume {weekly}"), code=1)
    run(*admin, "operators", "create", "carol", "--role", "read_deliveries")
    run(*admin, "operators", "revoke", "carol")

    table = run(*admin, "audit").stdout
    recurring = f"recurring {weekly}"
    row(table, "root", "AdminService/RevokeOperator", "operator carol", "OK")
    row(table, "root", "AdminService/CreateOperator", "operator carol", "OK")
    row(table, "ops", "DeliveryService/ResumeRecurringDelivery", recurring, "FAILED_PRECONDITION")
    row(table, "ops", "DeliveryService/CancelRecurringDelivery", recurring, "OK")
    row(table, "ops", "DeliveryService/PauseRecurringDelivery", recurring, "OK")
    row(table, "ops", "DeliveryService/CreateRecurringDelivery", recurring, "OK")
    assert table.splitlines()[-1] == "Last page."

    events = run_json(*admin, "audit")["events"]
    assert [(e["operator"], e["method"].rsplit("/", 1)[-1], e["code"]) for e in events] == [
        ("root", "RevokeOperator", "OK"),
        ("root", "CreateOperator", "OK"),
        ("ops", "ResumeRecurringDelivery", "FAILED_PRECONDITION"),
        ("ops", "CancelRecurringDelivery", "OK"),
        ("ops", "PauseRecurringDelivery", "OK"),
        ("ops", "CreateRecurringDelivery", "OK"),
    ]
    assert all(e["time"].endswith("Z") and e["request_id"] and e["peer"] for e in events)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True)

    mine = run_json(*admin, "audit", "--operator", "root")["events"]
    assert [e["target"] for e in mine] == ["operator carol", "operator carol"]
    first = run(*admin, "audit", "--operator", "ops", "--page-size", "2").stdout
    assert re.search(
        r"^More: campaign audit --operator ops --page-token \S+$", first, re.MULTILINE
    ), first
    every = run_json(*admin, "audit", "--operator", "ops", "--page-size", "2", "--all")
    assert [e["id"] for e in every["events"]] == ids[2:]
    assert every["next_page_token"] == ""

    # The trail is the admin's to read.
    fails(*cli("audit"), expected="error: PERMISSION_DENIED: operator 'ops' lacks the role admin")


# --- make run's banner -----------------------------------------------------------------------


@dataclass
class Listening:
    address: str
    pid: int


def test_make_run_banner_gives_the_admin_token() -> None:
    service, stub = Listening("127.0.0.1:50051", 11), Listening("127.0.0.1:50052", 10)
    url = "postgresql://postgres@/delivery?host=/repo/.data/pg"
    shown = run_pair.banner(
        service,
        stub,
        url,
        token_file=".data/admin.token",
        has_token=True,
        campaign=".venv/bin/campaign",
    )
    row(shown, "admin token", ".data/admin.token")
    # The command itself is the README's (tests/integration/test_docs_tour.py).
    assert '.venv/bin/campaign --token "$(cat .data/admin.token)" --json' in shown
    # Every grpcurl call of a DeliveryService RPC carries a token; health and reflection
    # are open.
    calls = re.findall(r"^\s+grpcurl (.*)$", shown.replace("\\\n", " "), re.MULTILINE)
    assert len(calls) == 3, shown
    for call in calls:
        needs_token = "delivery.v1.DeliveryService/" in call
        assert ("authorization: Bearer $CAMPAIGN_TOKEN" in call) == needs_token, call
    assert "127.0.0.1:50051" in shown and "(pid 11)" in shown
    # Where to go next: the demo, the metrics (off unless their ports are set), settings.
    assert "make demo" in shown and "python -m delivery_service --help" in shown
    row(shown, "metrics", "service off, stub off")
    on = run_pair.banner(
        service, stub, url, token_file=".data/admin.token", has_token=True,
        campaign=".venv/bin/campaign", metrics_ports=("9100", "9101"),
    )  # fmt: skip
    row(on, "metrics", "service http://127.0.0.1:9100/metrics, stub http://127.0.0.1:9101/metrics")

    # A database that had an admin already: no token was written; say how to get one.
    without = run_pair.banner(
        service,
        stub,
        url,
        token_file=".data/admin.token",
        has_token=False,
        campaign=".venv/bin/campaign",
    )
    assert "$(cat .data/admin.token)" not in without
    assert f"operators create root --role admin --database-url '{url}'" in without
    assert '--token "$ADMIN_TOKEN" --json' in without


def test_make_run_passes_the_bootstrap_token_file() -> None:
    token_file = str(REPO_ROOT / ".data" / "admin.token")
    assert run_pair.service_args([]) == ["--bootstrap-token-file", token_file]
    assert run_pair.service_args(["--log-level", "DEBUG"])[:2] == ["--log-level", "DEBUG"]


# --- make demo -------------------------------------------------------------------------------


def demo(cli_pair: CliPair, *args: str) -> subprocess.Popen[str]:
    """`make demo`, which is `python -m campaign_cli.demo *args`, as a process against the
    pair, its addresses and database from the environment as in a shell where `make run`
    is up."""
    environment = child_env(
        {
            "COLUMNS": "200",
            "CAMPAIGN_ADDRESS": cli_pair.address,
            "MTA_ADDRESS": cli_pair.mta_address,
            "DATABASE_URL": cli_pair.database_url,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "campaign_cli.demo", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
    )


def live_demo_operators(database_url: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM operators WHERE name LIKE 'demo-%' AND revoke_time IS NULL"
        ).fetchall()
    return [name for (name,) in rows]


def test_demo(cli_pair: CliPair) -> None:
    """The demo end to end; only the size and the validity are smaller, to be quick."""
    process = demo(cli_pair, "--recipients", "300", "--validity", "2s")
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    assert "Traceback" not in out + err
    row(out, "Targeted", "315")
    row(out, "To deliver", "300")
    assert re.search(r"^FINISHED\s+\S+ 300/300 100%$", out, re.MULTILINE), out
    row(out, "Final", "yes")
    found = re.search(r"KPIs of delivery (\d+)", out)
    assert found, out
    delivery_id = int(found.group(1))

    # The table holds the service's final figures.
    kpis = run_json(*cli_pair.args(f"kpis {delivery_id}"))["kpis"]
    assert kpis["final"] is True
    assert (kpis["to_deliver"], kpis["sent"], kpis["pending"]) == (300, 300, 0)
    # The seeded mix bounces some messages, and every message ends up counted once.
    assert kpis["failed"] > 0
    assert kpis["delivered"] + kpis["failed"] == 300
    # Fates no longer change once FINISHED; opens and clicks still count, so a late one
    # may have come in since the table was printed.
    for label, key in (
        ("To deliver", "to_deliver"),
        ("Sent (relayed)", "sent"),
        ("Delivered", "delivered"),
        ("Bounces + errors", "failed"),
        ("Pending", "pending"),
    ):
        row(out, label, f"{kpis[key]:,}")
    for label, key in (("Opened", "opened"), ("Clicked", "clicked")):
        shown = re.search(rf"^\s*{label}\s+([\d,]+)\s", out, re.MULTILINE)
        assert shown, out
        assert int(shown.group(1).replace(",", "")) <= kpis[key], out
    with psycopg.connect(cli_pair.database_url, autocommit=True) as conn:
        state = conn.execute("SELECT state FROM deliveries WHERE id = %s", (delivery_id,))
        assert state.fetchone() == ("FINISHED",)
    # Its operator did its work and was revoked.
    assert live_demo_operators(cli_pair.database_url) == []


def delivers_everything(cli_pair: CliPair) -> None:
    """A delivery of 50 through the stub has every message delivered and none bounced:
    the stub is not bouncing mail (the demo's mix is not left behind)."""
    with callers.channel(cli_pair.address, bearer(cli_pair.token)) as channel:
        service = pb_grpc.DeliveryServiceStub(channel)
        emails = [f"u{i}@example.com" for i in range(50)]
        created = service.CreateDelivery(flows.request(emails), timeout=30)
        delivery_id = created.delivery.id
        service.PrepareDelivery(pb.PrepareDeliveryRequest(delivery_id=delivery_id), timeout=30)
        service.ConfirmSend(pb.ConfirmSendRequest(delivery_id=delivery_id), timeout=30)

        def kpis() -> pb.Kpis:
            got = service.GetKpis(pb.GetKpisRequest(delivery_id=delivery_id), timeout=30).kpis
            assert isinstance(got, pb.Kpis)
            return got

        # Under the seeded mix some messages bounce at once, and some never get delivered.
        processes.wait_until(
            lambda: (k := kpis()).delivered == 50 or k.failed, 60, message="not all delivered"
        )
        final = kpis()
    assert (final.delivered, final.failed) == (50, 0), final


def test_demo_checks_before_it_changes_the_stub_and_restores_it(cli_pair: CliPair) -> None:
    """A demo that cannot work is refused before it touches anything; one that fails or
    is interrupted (Ctrl-C) after setting the stub's mix sets it back and revokes its
    operator."""
    # More recipients than one request takes, with the demo's repeats and bad addresses.
    too_many = demo(cli_pair, "--recipients", "100000")
    out, err = too_many.communicate(timeout=60)
    assert too_many.returncode == 2, out + err
    assert "99985" in err, err
    assert "Operator" not in out and live_demo_operators(cli_pair.database_url) == []

    # A validity the service refuses: refused before the stub's mix is set.
    refused = demo(cli_pair, "--recipients", "10", "--validity", "31d")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1, out + err
    assert "INVALID_ARGUMENT" in err and "validity_period" in err, err
    assert "MTA stub at" not in out, out
    assert live_demo_operators(cli_pair.database_url) == []
    delivers_everything(cli_pair)

    # Ctrl-C while it watches its delivery, the stub's mix set.
    interrupted = demo(cli_pair, "--recipients", "300", "--validity", "30s")
    assert interrupted.stdout is not None
    for line in interrupted.stdout:
        if line.startswith("MTA stub at"):
            break
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode != 0, out + err
    assert live_demo_operators(cli_pair.database_url) == []
    delivers_everything(cli_pair)


def test_a_list_longer_than_a_request_takes_is_added_call_by_call(
    cli_pair: CliPair, tmp_path: Path
) -> None:
    """250,001 addresses: one CreateDelivery of 100,000, then AddRecipients of 100,000 and
    of 50,001, each at its position; running the command again with its request id
    repeats them, and the list stays as it was."""
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("".join(f"u{i}@example.com\n" for i in range(250_001)), encoding="utf-8")
    create = (
        "deliveries create --label Big --subject Hi --body Hi "
        f"--recipients-file {shlex.quote(str(recipients))} --request-id big-list"
    )
    first = run_json(*cli_pair.args(f"--json {create}"))
    again = run_json(*cli_pair.args(f"--json {create}"))
    assert first["delivery"]["id"] == again["delivery"]["id"]
    prepared = run_json(*cli_pair.args(f"--json deliveries prepare {first['delivery']['id']}"))
    assert (prepared["targeted"], prepared["to_deliver"]) == (250_001, 250_001)
