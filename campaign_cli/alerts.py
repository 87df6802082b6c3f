"""`campaign alerts`: the delivery alerts the service raised (ListAlerts, read_deliveries),
newest first: one delivery's, or every delivery's.

Registered on `campaign_cli.app` as addresses.py is. A table, JSON or CSV (`--format`);
off a terminal the table is as wide as its rows, never cut.
"""

from __future__ import annotations

import csv
import shlex
import sys
from typing import Annotated, Any

import typer
from delivery.v1 import delivery_service_pb2 as pb

from campaign_cli import app as cli
from campaign_cli import render
from campaign_cli.render import Format

# The most alerts one ListAlerts call returns.
MAX_PAGE = 1000
DEFAULT_LIMIT = 100

CSV_COLUMNS = (
    "raise_time", "delivery_id", "criterion", "value", "threshold", "stopped", "message",
)  # fmt: skip


def csv_row(a: pb.Alert) -> list[Any]:
    """An alert as CSV: the JSON's values (a ratio from 0 to 1, seconds, or messages per
    hour), `true`/`false` for stopped, blanks for what is unset."""
    data = render.to_json(a)
    data["stopped"] = "true" if a.stopped else "false"
    return ["" if data[c] is None else data[c] for c in CSV_COLUMNS]


def again(delivery: int | None, limit: int, output: Format | None) -> str:
    """The command as given, without its page token: where the next page starts."""
    words = ["campaign", "alerts"]
    if delivery is not None:
        words += ["--delivery", str(delivery)]
    if limit != DEFAULT_LIMIT:
        words += ["--limit", str(limit)]
    if output is not None:
        words += ["--format", output.value]
    return shlex.join(words)


@cli.app.command("alerts")
def list_alerts(
    ctx: typer.Context,
    delivery: cli.DeliveryFilter = None,
    limit: Annotated[int, typer.Option(min=1, help="The most alerts to print.")] = DEFAULT_LIMIT,
    every: Annotated[bool, typer.Option("--all", help="Every alert there is.")] = False,
    page_token: cli.PageToken = "",
    output: cli.Output = None,
) -> None:
    """List delivery alerts, newest first: hard- or soft-bounce ratio over 5 %, nothing
    relayed, throughput too low, complaints over 0.1 % (each once per delivery and day)."""
    client = cli._client(ctx)
    alerts: list[pb.Alert] = []
    token = page_token
    while True:
        # The last page asked for ends at the limit, so its token resumes right after it.
        size = MAX_PAGE if every else min(MAX_PAGE, limit - len(alerts))
        page = client.list_alerts(
            pb.ListAlertsRequest(delivery_id=delivery or 0, page_size=size, page_token=token)
        )
        alerts += page.alerts
        token = page.next_page_token
        if not token or (not every and len(alerts) >= limit):
            break
    response = pb.ListAlertsResponse(alerts=alerts, next_page_token=token)
    chosen = cli.chosen(ctx, output)
    more = render.next_page(token, again(delivery, limit, output))
    if chosen is Format.JSON:
        print(render.dumps(response), flush=True)
    elif chosen is Format.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_row(a) for a in alerts)
        sys.stdout.flush()
        if token:  # stdout stays CSV alone
            print(more, file=sys.stderr, flush=True)
    else:
        console = cli.make_console()
        if alerts:
            console.print(render.alerts_table(alerts, with_delivery=True))
        elif page_token:  # a full page before this one: a token, though nothing followed
            console.print("No more alerts.")
        else:
            console.print(f"No alerts for delivery {delivery}." if delivery else "No alerts.")
        console.print(more)
