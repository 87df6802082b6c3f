"""`campaign addresses ...`: the address table, what feedback taught the service of each
address (AddressService: reading needs read_deliveries, changing manage_profiles).

Registered on `campaign_cli.app` as admin_commands.py says. `list` prints a table, JSON
or CSV (`--format`); off a terminal the table is as wide as its rows, never cut.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import shlex
import sys
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2
from rich import box
from rich.console import Group
from rich.table import Table

from campaign_cli import app as cli
from campaign_cli import render
from campaign_cli.render import Format

addresses_app = typer.Typer(
    help="The address table: quarantines and the denylist (read: read_deliveries; "
    "release, quarantine, denylist, release-all: manage_profiles).",
    no_args_is_help=True,
)
cli.app.add_typer(addresses_app, name="addresses")

# The most entries one ListAddresses call returns.
MAX_PAGE = 1000


class Status(enum.StrEnum):
    VALID = "valid"
    ERRONEOUS = "erroneous"
    QUARANTINED = "quarantined"
    DENYLISTED = "denylisted"


class Releasable(enum.StrEnum):
    ERRONEOUS = "erroneous"
    QUARANTINED = "quarantined"
    DENYLISTED = "denylisted"


class Reason(enum.StrEnum):
    """delivery.v1.FailureReason's values (tests/unit/test_cli_addresses.py pairs them)."""

    USER_UNKNOWN = "user-unknown"
    MAILBOX_FULL = "mailbox-full"
    INVALID_DOMAIN = "invalid-domain"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    EXPIRED = "expired"
    ACCOUNT_DISABLED = "account-disabled"
    NOT_DEFINED = "not-defined"
    AUTO_REPLY = "auto-reply"


Address = Annotated[str, typer.Argument(metavar="ADDRESS", help="The email address (any case).")]
Reasons = Annotated[
    Reason | None, typer.Option("--reason", help="Only entries whose last failure had this reason.")
]
Domain = Annotated[
    str | None, typer.Option(help="Only addresses of this domain (exact, any case).")
]
ErrorText = Annotated[
    str | None,
    typer.Option(
        help="Only entries whose last SMTP reply contains this (any case), e.g. 550-5.1.1."
    ),
]
ChangedAfter = Annotated[
    str | None,
    typer.Option(
        metavar="RFC3339",
        help="Only entries changed at or after this time, e.g. 2026-11-28T04:00:00Z.",
    ),
]
ChangedBefore = Annotated[
    str | None,
    typer.Option(metavar="RFC3339", help="Only entries changed before this time."),
]


def parse_time(text: str, option: str) -> timestamp_pb2.Timestamp:
    """An RFC 3339 date and time with its offset (`Z` or `+02:00`) → a Timestamp."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise typer.BadParameter(
            f"{text!r} is not an RFC 3339 time such as 2026-11-28T04:00:00Z or "
            "2026-11-28T05:00:00+01:00",
            param_hint=option,
        )
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _filter(
    statuses: Iterable[str],
    reason: Reason | None,
    domain: str | None,
    error_text: str | None,
    changed_after: str | None,
    changed_before: str | None,
) -> adpb.AddressFilter:
    where = adpb.AddressFilter(
        statuses=[adpb.AddressStatus.Value(f"ADDRESS_STATUS_{s.upper()}") for s in statuses],
        domain=domain or "",
        error_text=error_text or "",
    )
    if reason is not None:
        where.failure_reason = pb.FailureReason.Value(f"FAILURE_REASON_{reason.name}")
    if changed_after is not None:
        where.changed_after.CopyFrom(parse_time(changed_after, "'--changed-after'"))
    if changed_before is not None:
        where.changed_before.CopyFrom(parse_time(changed_before, "'--changed-before'"))
    return where


def _again(ctx: typer.Context) -> str:
    """The command as given, without its page options: where the next page starts."""
    words = ["campaign", "addresses", "list"]
    for name, value in ctx.params.items():
        if name in ("limit", "page_token", "every", "output") or value is None:
            continue
        option = "--" + name.rstrip("_").replace("_", "-")
        for item in value if isinstance(value, list | tuple) else [value]:
            words += [option, str(item)]
    return shlex.join(words)


# --- what is printed --------------------------------------------------------------------


def status(value: int) -> str:
    return render.enum_name(adpb.AddressStatus.DESCRIPTOR, value) or "-"


def failure(a: adpb.Address) -> str:
    if not a.failure_type and not a.failure_reason:
        return "-"
    kind = (render.enum_name(pb.FailureType.DESCRIPTOR, a.failure_type) or "-").lower()
    reason = render.enum_name(pb.FailureReason.DESCRIPTOR, a.failure_reason) or "-"
    return f"{kind}: {reason.lower().replace('_', ' ')}"


def reply(a: adpb.Address) -> str:
    return render.reply(a.smtp_reply, a.HasField("smtp_reply"))


def _time(value: timestamp_pb2.Timestamp, present: bool) -> str:
    return render.when(value, present, zone=False)


def addresses_table(entries: Iterable[adpb.Address]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("Address", "Status", "Errors", "Failure", "SMTP reply", "Changed (UTC)", "By"):
        table.add_column(name, justify="right" if name == "Errors" else "left", overflow="fold")
    for a in entries:
        table.add_row(
            a.address,
            status(a.status),
            str(a.error_count),
            failure(a),
            reply(a),
            _time(a.update_time, a.HasField("update_time")),
            a.changed_by or "-",
        )
    return table


def address_table(a: adpb.Address) -> Group:
    # The title on a line of its own: a table's title wraps at the table's width.
    table = Table(show_header=False, box=box.SIMPLE)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("Status", status(a.status)),
        ("Errors", str(a.error_count)),
        ("First error", render.when(a.first_error_time, a.HasField("first_error_time"))),
        ("Last error", render.when(a.last_error_time, a.HasField("last_error_time"))),
        ("Failure", failure(a)),
        ("SMTP reply", reply(a)),
        ("Delivery", str(a.delivery_id) if a.delivery_id else "-"),
        ("Message", str(a.message_id) if a.message_id else "-"),
        ("Changed", render.when(a.update_time, a.HasField("update_time"))),
        ("Changed by", a.changed_by or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return Group(f"Address {a.address}", table)


CSV_COLUMNS = (
    "address", "status", "error_count", "first_error_time", "last_error_time", "failure_type",
    "failure_reason", "smtp_code", "smtp_enhanced_status", "smtp_text", "delivery_id",
    "message_id", "update_time", "changed_by",
)  # fmt: skip


def csv_row(a: adpb.Address) -> list[Any]:
    data = render.to_json(a)
    smtp = data.pop("smtp_reply") or {"code": "", "enhanced_status": "", "text": ""}
    data |= {
        "smtp_code": smtp["code"] or "",
        "smtp_enhanced_status": smtp["enhanced_status"],
        "smtp_text": smtp["text"],
    }
    return ["" if data[c] is None else data[c] for c in CSV_COLUMNS]


# --- commands --------------------------------------------------------------------------


@addresses_app.command("list")
def list_addresses(
    ctx: typer.Context,
    status_: Annotated[
        list[Status] | None,
        typer.Option("--status", help="Only entries with this status; repeatable."),
    ] = None,
    reason: Reasons = None,
    domain: Domain = None,
    error_text: ErrorText = None,
    changed_after: ChangedAfter = None,
    changed_before: ChangedBefore = None,
    limit: Annotated[int, typer.Option(min=1, help="The most entries to print.")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Every entry that matches.")] = False,
    page_token: cli.PageToken = "",
    output: cli.Output = None,
) -> None:
    """List address entries, most recently changed first (only entries that ever changed)."""
    where = _filter(
        dict.fromkeys(status_ or []), reason, domain, error_text, changed_after, changed_before
    )
    client = cli._client(ctx)
    entries: list[adpb.Address] = []
    token = page_token
    while True:
        # The last page asked for ends at the limit, so its token resumes right after it.
        size = MAX_PAGE if every else min(MAX_PAGE, limit - len(entries))
        page = client.list_addresses(
            adpb.ListAddressesRequest(filter=where, page_size=size, page_token=token)
        )
        entries += page.addresses
        token = page.next_page_token
        if not token or (not every and len(entries) >= limit):
            break
    response = adpb.ListAddressesResponse(addresses=entries, next_page_token=token)
    chosen = cli.chosen(ctx, output)
    if chosen is Format.JSON:
        print(render.dumps(response), flush=True)
    elif chosen is Format.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_row(a) for a in entries)
        sys.stdout.flush()
        if token:  # stdout stays CSV alone
            print(render.next_page(token, _again(ctx)), file=sys.stderr, flush=True)
    else:
        console = cli.make_console()
        console.print(addresses_table(entries))
        console.print(render.next_page(token, _again(ctx)))


@addresses_app.command("show")
def show(ctx: typer.Context, address: Address, output: cli.Output = None) -> None:
    """Show one address's entry (an address never seen is VALID)."""
    response = cli._client(ctx).get_address(address)
    cli._show(
        ctx,
        response,
        address_table(response.address),
        output=output,
        rows=(adpb.Address.DESCRIPTOR, [response.address]),
    )


def _set(name: str, value: adpb.AddressStatus.ValueType, done: str, doc: str) -> None:
    """`campaign addresses NAME ADDRESS`: one change by hand, then the entry."""

    @addresses_app.command(name, help=doc)
    def command(ctx: typer.Context, address: Address) -> None:
        response = cli._client(ctx).set_address_status(address, value)
        a = response.address
        cli._show(ctx, response, Group(f"{a.address}: {done}.", address_table(a)))


_set(
    "release",
    adpb.ADDRESS_STATUS_VALID,
    "released (VALID)",
    "Release an address (VALID, its error count back to 0): preparation targets it again.",
)
_set(
    "quarantine",
    adpb.ADDRESS_STATUS_QUARANTINED,
    "quarantined",
    "Put an address in quarantine: preparation drops it until it is released.",
)
_set(
    "denylist",
    adpb.ADDRESS_STATUS_DENYLISTED,
    "denylisted",
    "Put an address on the denylist: preparation drops it until it is released.",
)


@addresses_app.command("release-all")
def release_all(
    ctx: typer.Context,
    status_: Annotated[
        list[Releasable] | None,
        typer.Option(
            "--status",
            help="Only entries with this status; repeatable (default: all three). "
            "Naming them is how to release every entry.",
        ),
    ] = None,
    reason: Reasons = None,
    domain: Domain = None,
    error_text: ErrorText = None,
    changed_after: ChangedAfter = None,
    changed_before: ChangedBefore = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count them: nothing changes.")
    ] = False,
) -> None:
    """Release every erroneous, quarantined or denylisted entry a filter takes (at least
    one filter option), e.g. a provider's outage: --domain and --error-text 550-5.1.1
    within --changed-after/--changed-before. Prints how many."""
    where = _filter(
        dict.fromkeys(status_ or []), reason, domain, error_text, changed_after, changed_before
    )
    response = cli._client(ctx).release_addresses(
        adpb.ReleaseAddressesRequest(filter=where, dry_run=dry_run)
    )
    n = response.released
    noun = "address" if n == 1 else "addresses"
    line = (
        f"Would release {n:,} {noun} (dry run: nothing changed)."
        if dry_run
        else f"Released {n:,} {noun}."
    )
    cli._show(ctx, {"released": n, "dry_run": dry_run}, line)
